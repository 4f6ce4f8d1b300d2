package bpf

// The generated spec (datapath_bpfel.go, datapath_bpfel.o) is committed; CI
// re-runs this and checks for drift, so the flags are pinned.
//go:generate go tool bpf2go -cc clang -strip llvm-strip -target bpfel -cflags "-O2 -g -Wall" -type event -type ct_key -type ct_value -type upstream_key datapath c/datapath.c -- -I/usr/include/x86_64-linux-gnu
