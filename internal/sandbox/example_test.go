package sandbox_test

import (
	"context"
	"fmt"
	"log"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// Build is for programs (make demo, the benchmark); tests use
// sandbox.New(t), which registers Close with t.Cleanup.
func Example() {
	sb, err := sandbox.Build(sandbox.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Close()

	// A server on the backend, reached from the client by plain routing.
	if _, err := sb.Backend.ListenTCP(":8080"); err != nil {
		log.Fatal(err)
	}
	if err := sb.Gateway.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		log.Fatal(err)
	}
	conn, greeting, err := sb.Client.DialTCP(context.Background(), "10.22.0.2:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Println(greeting) // "backend 10.11.0.2:<port>"
}
