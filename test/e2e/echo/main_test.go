package main

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// listen starts the TCP and UDP servers for name on loopback ports.
func listen(t *testing.T, name string) (tcpAddr, udpAddr string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() { _ = serveTCP(ln, []byte(name+"\n")) }()
	go func() { _ = serveUDP(pc, []byte(name+"\n")) }()
	return ln.Addr().String(), pc.LocalAddr().String()
}

func TestExchangeGetsTheServersNameForEveryRequest(t *testing.T) {
	tcp, udp := listen(t, "pod7")
	for proto, addr := range map[string]string{"tcp": tcp, "udp": udp} {
		names, err := exchange(proto, addr, 0, 5, time.Second)
		if err != nil {
			t.Fatalf("%s: %v", proto, err)
		}
		if strings.Join(names, ",") != "pod7,pod7,pod7,pod7,pod7" {
			t.Errorf("%s: names = %v", proto, names)
		}
	}
}

func TestExchangeSendsFromTheSourcePortAskedFor(t *testing.T) {
	_, udp := listen(t, "pod7")
	probe, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := probe.LocalAddr().(*net.UDPAddr).Port
	probe.Close()
	for range 2 {
		if names, err := exchange("udp", udp, port, 1, time.Second); err != nil || len(names) != 1 {
			t.Fatalf("from port %d: %v %v", port, names, err)
		}
	}
}

func TestRecordCountsConnectionsErrorsAndStickiness(t *testing.T) {
	tcp, _ := listen(t, "pod1")
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	res := result{Counts: map[string]int{}, ErrorSamples: map[string]string{}}
	for range 3 {
		names, err := exchange("tcp", tcp, 0, 2, time.Second)
		record(&res, names, err)
	}
	names, err := exchange("tcp", closedAddr, 0, 1, time.Second)
	record(&res, names, err)
	record(&res, []string{"pod1", "pod2"}, nil)

	if res.Counts["pod1"] != 4 || res.Errors.Refused != 1 || res.StickyViolations != 1 {
		t.Errorf("result = %+v, want 4 pod1, 1 refused, 1 sticky violation", res)
	}
}

func TestAnHTTPGetGetsAnHTTPResponse(t *testing.T) {
	tcp, _ := listen(t, "pod3")
	c, err := net.Dial("tcp", tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	status, _ := r.ReadString('\n')
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("status line %q", status)
	}
	var body string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		if line == "\r\n" {
			body, _ = r.ReadString('\n')
			break
		}
	}
	if body != "pod3\n" {
		t.Errorf("body = %q, want pod3", body)
	}
}

func TestThePeerLineIsAnsweredWithTheSourceTheServerSees(t *testing.T) {
	tcp, _ := listen(t, "pod3")
	c, err := net.Dial("tcp", tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("peer\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if want := "pod3 " + c.LocalAddr().String() + "\n"; line != want {
		t.Errorf("answer %q, want %q", line, want)
	}
}
