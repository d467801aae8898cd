package main

import (
	"fmt"
	"io"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/doctor"
)

// runDoctor prints one line per check; exit 1 when any failed.
func runDoctor(cfgPath, stateDir string, probe, jsonOut bool, stdout, stderr io.Writer) int {
	write := doctor.WriteText
	if jsonOut {
		write = doctor.WriteJSON
	}
	cfg, err := config.Load(cfgPath)
	var rs []doctor.Result
	if err != nil {
		rs = []doctor.Result{{Check: "config", Subject: cfgPath, Status: doctor.Fail, Message: err.Error(),
			Fix: "correct the file; fwdd check -c " + cfgPath + " lists every problem"}}
	} else {
		rs = append([]doctor.Result{{Check: "config", Subject: cfgPath, Status: doctor.OK,
			Message: fmt.Sprintf("valid, %d forwards", len(cfg.Forwards))}},
			doctor.Run(doctor.Env{Cfg: cfg, StateDir: stateDir, Probe: probe})...)
	}
	if err := write(stdout, rs); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if doctor.Failed(rs) {
		return 1
	}
	return 0
}
