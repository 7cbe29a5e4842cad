// Package cmdline is the typed command line of the User-Mode Linux kernel:
// it parses a `linux` argument list (mem=, umid=, uml_dir=, ubdN=, ethN=,
// vecN:, conN=/sslN=, hostfs=, mconsole=, ...) into typed arguments, keeps
// everything it does not know in place, and renders the list back.
//
// Parsing follows the 6.1 kernel's own rules (prefix matching, ubd flags,
// ',' or ':' separators, channel prefixes) but is stricter where the kernel
// would silently do something surprising: a bad argument becomes an
// *ArgError that names it, says what is wrong and how to fix it. Rendering
// a parsed line gives back the same bytes for canonical input, and any
// rendered line parses to the same structure.
package cmdline
