# proxyd:dev for Docker users: the same file tree `go run ./hack/image`
# writes to proxyd.tar (static /proxyd, iptables-nft/legacy with restore and
# save, their shared libraries and glibc, all from Debian bookworm .debs),
# staged by the same code (hack/image -rootfs) and copied onto scratch.
#
#   docker build -t proxyd:dev .
#
# Not exercised in CI (CI has no Docker); the e2enode tests use hack/image.
FROM golang:1.26-bookworm AS build
RUN apt-get update -qq
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go run ./hack/image -rootfs /rootfs -debs /debs

FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
ENTRYPOINT ["/proxyd"]
