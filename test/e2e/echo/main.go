// Command echo is the test lab's Pod workload and traffic generator.
//
// "echo serve" answers with its name: every line received on a TCP connection
// gets "NAME\n" back (the connection stays open for further lines; the line
// "peer" gets "NAME PEER\n", PEER being the source address:port the server
// sees, so tests can tell whether a connection was masqueraded), every UDP
// datagram gets one "NAME\n" datagram back, and a TCP connection that starts
// with an HTTP GET or HEAD request gets a minimal HTTP/1.1 200 response whose
// body is "NAME\n", so plain HTTP clients work against it too.
//
// "echo client" opens --count connections (TCP) or sockets (UDP) to --addr,
// sends --requests-per-conn requests on each and prints one JSON object:
//
//	{"counts":{"pod1":103,...},"errors":{"refused":0,"timeout":0,"other":0},"sticky_violations":0}
//
// counts holds, per answering name, the connections whose requests were all
// answered (a connection is counted under the name of its first answer);
// errors counts the connections that failed, by the first error; and
// sticky_violations counts the connections whose answers came from more than
// one name. counts and errors together add up to --count.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  echo serve --name NAME [--port 8080] [--udp-port 8080]
  echo client --proto tcp|udp --addr IP:PORT --count N [--requests-per-conn K] [--timeout 2s] [--parallel P] [--source-port N]`)
	os.Exit(2)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	name := fs.String("name", "", "name to answer with (required)")
	port := fs.Int("port", 8080, "TCP port (0 disables TCP)")
	udpPort := fs.Int("udp-port", 0, "UDP port (0 disables UDP)")
	_ = fs.Parse(args)
	if *name == "" {
		return errors.New("serve: --name is required")
	}
	reply := []byte(*name + "\n")
	errc := make(chan error, 2)
	if *port != 0 {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(*port))
		if err != nil {
			return fmt.Errorf("listen tcp: %w", err)
		}
		go func() { errc <- serveTCP(ln, reply) }()
	}
	if *udpPort != 0 {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(*udpPort))
		if err != nil {
			return fmt.Errorf("listen udp: %w", err)
		}
		go func() { errc <- serveUDP(pc, reply) }()
	}
	fmt.Printf("echo %s serving tcp :%d udp :%d\n", *name, *port, *udpPort)
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sigc:
		fmt.Printf("echo %s: %v, exiting\n", *name, s)
		return nil
	case err := <-errc:
		return err
	}
}

func serveTCP(ln net.Listener, reply []byte) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		go handleTCP(c, reply)
	}
}

func handleTCP(c net.Conn, reply []byte) {
	defer c.Close()
	r := bufio.NewReader(c)
	first := true
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if first && (strings.HasPrefix(line, "GET ") || strings.HasPrefix(line, "HEAD ")) {
			answerHTTP(c, r, reply, strings.HasPrefix(line, "HEAD "))
			return
		}
		first = false
		out := reply
		if line == "peer\n" {
			out = []byte(strings.TrimSpace(string(reply)) + " " + c.RemoteAddr().String() + "\n")
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// answerHTTP skips the request headers and writes one HTTP response.
func answerHTTP(c net.Conn, r *bufio.Reader, reply []byte, head bool) {
	for {
		line, err := r.ReadString('\n')
		if err != nil || strings.TrimRight(line, "\r\n") == "" {
			break
		}
	}
	hdr := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", len(reply))
	out := []byte(hdr)
	if !head {
		out = append(out, reply...)
	}
	_, _ = c.Write(out)
}

func serveUDP(pc net.PacketConn, reply []byte) error {
	buf := make([]byte, 64<<10)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("udp read: %w", err)
		}
		_, _ = pc.WriteTo(reply, addr)
	}
}

// result is the JSON printed by "echo client".
type result struct {
	Counts           map[string]int    `json:"counts"`
	Errors           errorCounts       `json:"errors"`
	StickyViolations int               `json:"sticky_violations"`
	ErrorSamples     map[string]string `json:"error_samples,omitempty"`
}

type errorCounts struct {
	Refused int `json:"refused"`
	Timeout int `json:"timeout"`
	Other   int `json:"other"`
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	proto := fs.String("proto", "tcp", "tcp or udp")
	addr := fs.String("addr", "", "IP:PORT to connect to (required)")
	count := fs.Int("count", 1, "number of connections (TCP) or sockets (UDP)")
	perConn := fs.Int("requests-per-conn", 1, "requests sent on each connection or socket")
	timeout := fs.Duration("timeout", 2*time.Second, "timeout for the dial and for each answer")
	parallel := fs.Int("parallel", 1, "connections in flight at once")
	sourcePort := fs.Int("source-port", 0, "local port to send from (0: any; needs --count 1), so that a later run reuses the same conntrack entry")
	_ = fs.Parse(args)
	if *addr == "" {
		return errors.New("client: --addr is required")
	}
	if *proto != "tcp" && *proto != "udp" {
		return fmt.Errorf("client: --proto must be tcp or udp, not %q", *proto)
	}
	if *count < 0 || *perConn < 1 || *parallel < 1 {
		return errors.New("client: --count must be >= 0, --requests-per-conn and --parallel >= 1")
	}
	if *sourcePort != 0 && (*count != 1 || *sourcePort < 1 || *sourcePort > 65535) {
		return errors.New("client: --source-port must be a port number, with --count 1")
	}

	res := result{Counts: map[string]int{}, ErrorSamples: map[string]string{}}
	var mu sync.Mutex
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range *parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				names, err := exchange(*proto, *addr, *sourcePort, *perConn, *timeout)
				mu.Lock()
				record(&res, names, err)
				mu.Unlock()
			}
		}()
	}
	for range *count {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	if len(res.ErrorSamples) == 0 {
		res.ErrorSamples = nil
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func record(res *result, names []string, err error) {
	if err != nil {
		kind := classify(err)
		switch kind {
		case "refused":
			res.Errors.Refused++
		case "timeout":
			res.Errors.Timeout++
		default:
			res.Errors.Other++
		}
		if _, ok := res.ErrorSamples[kind]; !ok {
			res.ErrorSamples[kind] = err.Error()
		}
		return
	}
	res.Counts[names[0]]++
	for _, n := range names[1:] {
		if n != names[0] {
			res.StickyViolations++
			break
		}
	}
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return "other"
	}
}

// exchange opens one connection (or UDP socket), from sourcePort unless it
// is 0, sends n requests on it and returns the names that answered them.
func exchange(proto, addr string, sourcePort, n int, timeout time.Duration) ([]string, error) {
	d := net.Dialer{Timeout: timeout}
	if sourcePort != 0 {
		if proto == "tcp" {
			d.LocalAddr = &net.TCPAddr{Port: sourcePort}
		} else {
			d.LocalAddr = &net.UDPAddr{Port: sourcePort}
		}
	}
	c, err := d.Dial(proto, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	names := make([]string, 0, n)
	buf := make([]byte, 64<<10)
	var r *bufio.Reader
	if proto == "tcp" {
		r = bufio.NewReader(c)
	}
	for i := range n {
		if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
			return nil, err
		}
		if _, err := fmt.Fprintf(c, "req %d\n", i); err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
		var answer string
		if r != nil {
			answer, err = r.ReadString('\n')
		} else {
			var k int
			k, err = c.Read(buf)
			answer = string(buf[:k])
		}
		if err != nil {
			return nil, fmt.Errorf("answer %d: %w", i, err)
		}
		name := strings.TrimSpace(answer)
		if name == "" {
			return nil, fmt.Errorf("answer %d: empty", i)
		}
		names = append(names, name)
	}
	return names, nil
}
