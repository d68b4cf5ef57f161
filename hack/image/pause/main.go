// Command pause is the lab's Pod sandbox process (containerd's
// sandbox_image): it holds the Pod's namespaces open and does nothing until
// SIGTERM or SIGINT, then exits 0. Built static (CGO_ENABLED=0).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	// As PID 1 of the sandbox it inherits orphans; reap them so the Pod
	// does not collect zombies.
	signal.Notify(c, syscall.SIGCHLD)
	for s := range c {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
