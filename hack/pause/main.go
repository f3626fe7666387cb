// Command pause is the sandbox ("pause") image of `kubegate dev-cluster up --node`:
// it holds a pod's namespaces, reaps zombies and exits on SIGINT/SIGTERM. A static
// Go program so the image is `FROM scratch` and built without any registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
