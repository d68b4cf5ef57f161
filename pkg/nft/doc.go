// Package nft is proxyd's one nftables layer, shared by every mode that
// writes nftables (the nftables mode's tables and the IPVS mode's filter
// table): a small typed rule language and everything that speaks it.
//
//   - Types: a Table (family ip, ip6 or inet) holds Sets and Chains; a
//     Chain holds Rules; a Rule is a list of statements (Stmt), a closed
//     set with one file per kind (lookup.go, dnat.go, …), each of whose
//     tests shows the bytecode `nft --debug=netlink` prints for it.
//   - Printer: Table.String prints what `nft list table` prints.
//   - Compiler: CompileRule turns a rule into github.com/google/nftables
//     expressions for a table family; the Add* helpers queue tables, sets,
//     elements, chains and rules on a google/nftables connection.
//   - Decompiler: DecompileRule turns expressions back into statements. It
//     accepts exactly what the compiler emits: every statement it proposes
//     is compiled again and must give the same bytes, and anything else is
//     an error naming the expression.
//   - Reader: Reader.Table reads a table back from the kernel over netlink
//     (chains, sets with their flags, types and elements, rules decompiled)
//     into the same Table type, so the kernel's copy can be printed,
//     compared and traced like a rendering.
//   - Tracer: walks a packet through the netfilter hooks in the kernel's
//     order, running every base chain of every table it is given ordered by
//     hook and priority, plus pseudo-chains (IPVS) registered at a hook and
//     priority, and reports the path it took.
//
// The name is nft's: this package is the language nft prints, not a mode.
// It imports google/nftables as gnft for the wire format only.
package nft
