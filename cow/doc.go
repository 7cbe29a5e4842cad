// Package cow reads and writes User-Mode Linux copy-on-write disk files
// (the ubd driver's "COW" format) byte-compatibly with the kernel,
// uml_mkcow and uml_moo.
//
// A COW file starts with a header naming a backing file together with that
// file's size and modification time, followed by a bitmap with one bit per
// 512-byte sector and then the sector data. A set bit means the sector
// lives in the COW file; a clear bit means it is read from the backing
// file. The kernel accepts header versions 1, 2 and 3 and a "broken" v3
// written by early 64-bit kernels; this package reads all four and writes
// version 3, as the kernel does.
//
// The kernel refuses a backing file whose size or mtime differs from the
// header (ErrBackingChanged here) and takes fcntl locks on the files it
// opens. Open, Merge and Rebase take conflicting open-file-description
// locks, so they never touch a file a running instance has open; they
// report the holder with ErrInUse.
package cow
