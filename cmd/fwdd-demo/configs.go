package main

// The demo's configurations. The gateway's addresses toward the client are
// 10.11.0.1 and fd11::1; the backend is 10.22.0.2 and fd22::2.

const configHeader = `# fwdd.toml, written by fwdd-demo.
# fwdd owns one nftables table, "inet fwdd", and nothing else.
`

const firstForwards = `
# HTTP: the backend sees the gateway as the source (snat defaults to
# "masquerade"), so its replies always come back through fwdd.
[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"
log = true # log every new connection

[[forward]]
name = "dns"
proto = "udp"
port = 53
to = "10.22.0.2:5353"

# The same web server over IPv6.
[[forward]]
name = "web6"
port = 80
to = "[fd22::2]:8080"

# No source NAT: the backend sees the client's real address (it must route
# its replies back through this gateway).
[[forward]]
name = "direct"
port = 81
to = "10.22.0.2:8080"
snat = "none"

# A range mapped 1:1: 9000 -> 9100, 9001 -> 9101, 9002 -> 9102.
[[forward]]
name = "app-range"
port = "9000-9002"
to = "10.22.0.2:9100-9102"
`

// secondForwards: "web" moves to port 8081, "admin" is new, "app-range" is
// gone; "dns", "web6" and "direct" are unchanged.
const secondForwards = `
# HTTP: the backend sees the gateway as the source (snat defaults to
# "masquerade"), so its replies always come back through fwdd.
[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8081"
log = true # log every new connection

[[forward]]
name = "dns"
proto = "udp"
port = 53
to = "10.22.0.2:5353"

# The same web server over IPv6.
[[forward]]
name = "web6"
port = 80
to = "[fd22::2]:8080"

# No source NAT: the backend sees the client's real address (it must route
# its replies back through this gateway).
[[forward]]
name = "direct"
port = 81
to = "10.22.0.2:8080"
snat = "none"

# Only for clients in 10.11.0.0/24.
[[forward]]
name = "admin"
port = 82
to = "10.22.0.2:8080"
sources = ["10.11.0.0/24"]
`

// brokenForward is appended to the second config to make it invalid.
const brokenForward = `
[[forward]]
name = "broken"
port = 70000
to = "10.22.0.2"
`

const (
	firstConfig  = configHeader + firstForwards
	secondConfig = configHeader + secondForwards
	brokenConfig = secondConfig + brokenForward
)
