// A hello server on tableflip's documented API: Upgrader, Fds.Listen,
// Ready, Upgrade on SIGHUP, Exit, then http.Server.Shutdown. Usage: hello ADDR
package main

import (
	"context"
	"fmt"
	"html"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "Hello, port: %v, %q", r.Host, html.EscapeString(r.URL.Path))
}

func main() {
	upg, err := tableflip.New(tableflip.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer upg.Stop()

	go func() {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		for range hup {
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()

	ln, err := upg.Fds.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(hello)}
	go server.Serve(ln)

	if err := upg.Ready(); err != nil {
		log.Fatal(err)
	}
	log.Printf("pid %d serving on %s", os.Getpid(), ln.Addr())
	<-upg.Exit()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	server.Shutdown(ctx)
}
