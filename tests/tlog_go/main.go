// tlogcheck verifies shardnet's signed checkpoints and Merkle proofs with the Go
// checksum database's own packages (golang.org/x/mod/sumdb/note and sumdb/tlog),
// for tests/test_tlog_go.py. It reads one JSON request on stdin and writes one JSON
// answer: for each note, the names of the keys that verified it or an error; for
// each inclusion and consistency proof, "ok" or an error.
package main

import (
	"encoding/json"
	"os"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type record struct {
	Size  int64    `json:"size"`
	Root  []byte   `json:"root"`
	Index int64    `json:"index"`
	Leaf  []byte   `json:"leaf"`
	Proof [][]byte `json:"proof"`
}

type tree struct {
	Old     int64    `json:"old"`
	OldRoot []byte   `json:"old_root"`
	Size    int64    `json:"size"`
	Root    []byte   `json:"root"`
	Proof   [][]byte `json:"proof"`
}

type request struct {
	Vkeys   []string `json:"vkeys"`
	Notes   []string `json:"notes"`
	Records []record `json:"records"`
	Trees   []tree   `json:"trees"`
}

type answer struct {
	Notes   [][]string `json:"notes"`
	Records []string   `json:"records"`
	Trees   []string   `json:"trees"`
}

func hash(b []byte) (h tlog.Hash) {
	copy(h[:], b)
	return h
}

func hashes(bs [][]byte) []tlog.Hash {
	out := make([]tlog.Hash, len(bs))
	for i, b := range bs {
		out[i] = hash(b)
	}
	return out
}

func result(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		os.Stderr.WriteString("bad request: " + err.Error() + "\n")
		os.Exit(2)
	}
	var verifiers []note.Verifier
	for _, k := range req.Vkeys {
		v, err := note.NewVerifier(k)
		if err != nil {
			os.Stderr.WriteString("bad vkey " + k + ": " + err.Error() + "\n")
			os.Exit(2)
		}
		verifiers = append(verifiers, v)
	}
	known := note.VerifierList(verifiers...)
	var ans answer
	for _, text := range req.Notes {
		n, err := note.Open([]byte(text), known)
		if err != nil {
			ans.Notes = append(ans.Notes, []string{"error: " + err.Error()})
			continue
		}
		var names []string
		for _, s := range n.Sigs {
			names = append(names, s.Name)
		}
		ans.Notes = append(ans.Notes, names)
	}
	for _, r := range req.Records {
		ans.Records = append(ans.Records, result(tlog.CheckRecord(hashes(r.Proof), r.Size, hash(r.Root), r.Index, hash(r.Leaf))))
	}
	for _, t := range req.Trees {
		ans.Trees = append(ans.Trees, result(tlog.CheckTree(hashes(t.Proof), t.Size, hash(t.Root), t.Old, hash(t.OldRoot))))
	}
	if err := json.NewEncoder(os.Stdout).Encode(ans); err != nil {
		os.Exit(1)
	}
}
