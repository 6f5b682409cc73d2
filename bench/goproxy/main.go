// Command goproxy is the Go baseline of the proxy benchmark: net/http/httputil's
// ReverseProxy set up as typester/gate sets it up (a Director that points the request at the
// backend, sets a header and logs one line per request; the default Transport, which keeps
// at most 2 idle connections per backend). No authentication at all.
//
//	goproxy -listen 127.0.0.1:PORT -backend http://127.0.0.1:PORT [-idle N] [-log=false]
//
// -idle N raises the Transport's idle pool to N connections per backend (the "tuned" variant).
// Standard library only: it is built at benchmark time with whatever Go is installed.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backend := flag.String("backend", "", "backend base URL")
	idle := flag.Int("idle", 0, "idle connections kept per backend (0: Go's default Transport)")
	logging := flag.Bool("log", true, "log one line per request, as typester/gate does")
	flag.Parse()
	target, err := url.Parse(*backend)
	if err != nil || target.Host == "" {
		log.Fatalf("-backend: a URL such as http://127.0.0.1:8000 is required")
	}
	director := func(req *http.Request) {
		req.URL.Scheme = target.Scheme
		req.URL.Host = target.Host
		req.Header.Set("X-Gate-Backend-Host", req.URL.Host)
		log.Println("backend url", req.URL.String())
	}
	proxy := &httputil.ReverseProxy{Director: director}
	if *idle > 0 {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.MaxIdleConns = *idle
		transport.MaxIdleConnsPerHost = *idle
		proxy.Transport = transport
	}
	log.SetOutput(logOutput(*logging))
	if err := http.ListenAndServe(*listen, proxy); err != nil {
		log.Fatal(err)
	}
}

func logOutput(on bool) io.Writer {
	if on {
		return os.Stderr
	}
	return io.Discard
}
