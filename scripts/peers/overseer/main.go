// A hello server on overseer's documented API: main runs overseer.Run, the
// program serves state.Listener in a child; SIGUSR2 to the master restarts.
// Usage: hello ADDR
package main

import (
	"fmt"
	"html"
	"net/http"
	"os"

	"github.com/jpillora/overseer"
)

func prog(state overseer.State) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello, port: %v, %q", r.Host, html.EscapeString(r.URL.Path))
	})
	http.Serve(state.Listener, handler)
}

func main() {
	overseer.Run(overseer.Config{
		Program: prog,
		Address: os.Args[1],
	})
}
