package bpf

// The socket-LB object (socklb_bpfel.go, socklb_bpfel.o) is generated
// separately from the datapath's: its programs attach to a cgroup, not to
// veths, and its maps are its own.
//go:generate go tool bpf2go -cc clang -strip llvm-strip -target bpfel -cflags "-O2 -g -Wall" -type lb4_key -type lb4_service -type lb4_slot_key -type lb4_backend -type lb_affinity_key -type lb_affinity_value -type lb_affinity_match_key -type lb4_revnat_key -type lb4_revnat_value -type lb6_key -type lb6_backend -type lb6_revnat_key -type lb6_revnat_value socklb c/socklb.c -- -I/usr/include/x86_64-linux-gnu
