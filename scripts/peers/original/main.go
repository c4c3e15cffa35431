// A hello server on the Go original's documented drop-in for
// http.ListenAndServe; SIGHUP to the master reloads. Usage: hello ADDR
package main

import (
	"fmt"
	"html"
	"net/http"
	"os"

	"github.com/kuangchanglang/graceful"
)

type handler struct{}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "Hello, port: %v, %q", r.Host, html.EscapeString(r.URL.Path))
}

func main() {
	graceful.ListenAndServe(os.Args[1], &handler{})
}
