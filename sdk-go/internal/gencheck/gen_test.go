// Package gencheck checks that the generated protobuf code in sdk-go/proto
// is what scripts/genproto.sh makes from the repository's .proto files.
package gencheck

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"
)

func sdkDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// findProtoc looks where scripts/genproto.sh looks, without installing.
func findProtoc() string {
	if p := os.Getenv("PROTOC"); p != "" {
		return p
	}
	home := os.Getenv("CARGO_HOME")
	if home == "" {
		h, _ := os.UserHomeDir()
		home = filepath.Join(h, ".cargo")
	}
	if m, _ := filepath.Glob(filepath.Join(home, "registry", "src", "*", "protoc-bin-vendored-linux-x86_64-*", "bin", "protoc")); len(m) > 0 {
		return m[0]
	}
	if p, err := exec.LookPath("protoc"); err == nil {
		return p
	}
	return ""
}

// The generators name the protoc version in a comment; it differs between
// Debian's protoc and the vendored one and says nothing about the code.
var versionLine = regexp.MustCompile(`(?m)^//\s+(- )?protoc\s+.*\n`)

func TestGeneratedCodeIsFresh(t *testing.T) {
	protoc := findProtoc()
	if protoc == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("protoc not found under CI: install protobuf-compiler or build the Rust workspace (protoc-bin-vendored)")
		}
		t.Skip("protoc not found (no $PROTOC, no vendored protoc in ~/.cargo, none on PATH): cannot check that sdk-go/proto is fresh; skipping")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(sdkDir(), "scripts", "genproto.sh"), out)
	cmd.Env = append(os.Environ(), "PROTOC="+protoc)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/genproto.sh: %v\n%s", err, b)
	}
	committed := filepath.Join(sdkDir(), "proto")
	want := map[string][]byte{}
	_ = filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(out, p)
			want[rel], _ = os.ReadFile(p)
		}
		return nil
	})
	if len(want) == 0 {
		t.Fatal("the script generated nothing")
	}
	have := map[string]bool{}
	_ = filepath.WalkDir(committed, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Ext(p) == ".go" {
			rel, _ := filepath.Rel(committed, p)
			have[rel] = true
		}
		return nil
	})
	for rel, gen := range want {
		cur, err := os.ReadFile(filepath.Join(committed, rel))
		if err != nil {
			t.Errorf("sdk-go/proto/%s is missing: run sdk-go/scripts/genproto.sh", rel)
			continue
		}
		if !bytes.Equal(versionLine.ReplaceAll(cur, nil), versionLine.ReplaceAll(gen, nil)) {
			t.Errorf("sdk-go/proto/%s is stale: run sdk-go/scripts/genproto.sh", rel)
		}
	}
	for rel := range have {
		if want[rel] == nil {
			t.Errorf("sdk-go/proto/%s is not generated from any .proto any more: run sdk-go/scripts/genproto.sh", rel)
		}
	}
}
