package harness_test

import (
	"fmt"
	"log"

	"github.com/fwdd/fwdd/internal/harness"
	"github.com/fwdd/fwdd/internal/sandbox"
)

// Start is for programs (make demo, the benchmark); tests use
// harness.New(t, host, config), which fails the test and cleans up itself.
func Example() {
	sb, err := sandbox.Build(sandbox.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Close()
	d, err := harness.Start(sb.Gateway, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.22.0.2:8080\"\n",
		harness.Options{Bin: "bin/fwdd"})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()                       // stops it (SIGTERM) and removes its files
	if _, err := d.Reload(); err != nil { // SIGHUP
		log.Fatal(err)
	}
	for _, l := range d.Log() {
		fmt.Println(l.Level, l.Msg, l.Fields)
	}
}
