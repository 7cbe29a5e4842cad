// Package lab reads Netkit and Kathara lab directories (lab.conf, lab.dep,
// NODE.startup and NODE.shutdown, NODE/ trees, shared/ and _test/) into a
// plan of nodes, collision domains and links, and runs that plan on
// User-Mode Linux: one switch per domain, one COW file per node, the
// instances started in dependency order, startup scripts, ltest-style
// tests and declarative checks.
package lab
