// Package weftest starts real `weft` runtimes for the SDK's tests.
//
// The binary is $WEFT_BIN, else <repo>/target/debug/weft. When it is
// missing a test is skipped with a message, and fails when CI is set.
package weftest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bin returns the weft binary, or skips (fails under CI) when there is none.
func Bin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("WEFT_BIN")
	if bin == "" {
		_, file, _, _ := runtime.Caller(0)
		bin = filepath.Join(filepath.Dir(file), "..", "..", "..", "target", "debug", "weft")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("weft binary %s not found under CI (set WEFT_BIN or run cargo build -p weft): %v", bin, err)
		}
		t.Skipf("weft binary %s not found (set WEFT_BIN or run cargo build -p weft): skipping", bin)
	}
	return bin
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Component writes a component file into dir.
func Component(t testing.TB, dir, name, kind string, metadata map[string]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: %s\nspec:\n  type: %s\n  version: v1\n  metadata:\n", name, kind)
	if len(metadata) == 0 {
		b.WriteString("    []\n")
	}
	for k, v := range metadata {
		fmt.Fprintf(&b, "    - name: %s\n      value: %q\n", k, v)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Options describe a runtime to start.
type Options struct {
	AppID     string
	Resources string   // --resources-path; "" = a default set (see Start)
	DataDir   string   // "" = a temp dir
	Args      []string // more flags
	Env       []string // more environment, KEY=VALUE
	// Ports to reuse (a restart): 0 = pick free ones.
	GRPCPort, HTTPPort int
}

// Weft is a running runtime.
type Weft struct {
	t        testing.TB
	Opts     Options
	Bin      string
	GRPCPort int
	HTTPPort int
	DataDir  string
	UDS      string // gRPC Unix socket
	Shm      string // shared-memory socket
	Config   string // the configuration.file's file
	cmd      *exec.Cmd
	log      *bytes.Buffer
	logMu    *sync.Mutex
	exited   chan struct{}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Start starts a runtime and waits (at most 30 s) for its health endpoint.
// Without Resources it gets `statestore` (state.in-memory), `pubsub`
// (pubsub.embedded) and `configstore` (configuration.file on
// <data dir>/configuration.yaml). It serves gRPC on TCP and on a Unix
// socket, and shared memory, all under the data dir.
func Start(t testing.TB, o Options) *Weft {
	t.Helper()
	bin := Bin(t)
	if o.DataDir == "" {
		// Short paths: Unix socket paths are limited to 108 bytes.
		d, err := os.MkdirTemp("", "weft-go-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		o.DataDir = d
	}
	cfg := filepath.Join(o.DataDir, "configuration.yaml")
	if o.Resources == "" {
		res := filepath.Join(o.DataDir, "resources")
		if err := os.MkdirAll(res, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(cfg); err != nil {
			if err := os.WriteFile(cfg, []byte("greeting:\n  value: hello\n  version: \"1\"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		Component(t, res, "statestore", "state.in-memory", nil)
		Component(t, res, "pubsub", "pubsub.embedded", nil)
		Component(t, res, "configstore", "configuration.file", map[string]string{"path": cfg})
		o.Resources = res
	}
	if o.GRPCPort == 0 {
		o.GRPCPort = FreePort(t)
	}
	if o.HTTPPort == 0 {
		o.HTTPPort = FreePort(t)
	}
	w := &Weft{
		t: t, Opts: o, Bin: bin,
		GRPCPort: o.GRPCPort, HTTPPort: o.HTTPPort, DataDir: o.DataDir,
		UDS:    filepath.Join(o.DataDir, "grpc.sock"),
		Shm:    filepath.Join(o.DataDir, "shm.sock"),
		Config: cfg,
		log:    &bytes.Buffer{}, logMu: &sync.Mutex{},
	}
	w.start()
	t.Cleanup(w.Stop)
	return w
}

func (w *Weft) start() {
	t := w.t
	t.Helper()
	args := []string{"run",
		"--app-id", w.Opts.AppID,
		"--grpc-port", strconv.Itoa(w.GRPCPort),
		"--http-port", strconv.Itoa(w.HTTPPort),
		"--data-dir", w.DataDir,
		"--resources-path", w.Opts.Resources,
		"--uds", w.UDS,
		"--shm-socket", w.Shm,
	}
	args = append(args, w.Opts.Args...)
	cmd := exec.Command(w.Bin, args...)
	env := []string{}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DAPR_API_TOKEN=") || strings.HasPrefix(kv, "WEFT_API_TOKEN=") ||
			strings.HasPrefix(kv, "DAPR_GRPC_PORT=") || strings.HasPrefix(kv, "DAPR_HTTP_PORT=") {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(append(env, "WEFT_LOG=info"), w.Opts.Env...)
	out := lockedWriter{w.logMu, w.log}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", w.Bin, err)
	}
	w.cmd = cmd
	w.exited = make(chan struct{})
	go func(c *exec.Cmd, ch chan struct{}) { _ = c.Wait(); close(ch) }(cmd, w.exited)
	deadline := time.Now().Add(30 * time.Second)
	client := http.Client{Timeout: time.Second}
	for {
		select {
		case <-w.exited:
			t.Fatalf("weft exited during start-up:\n%s", w.Logs())
		default:
		}
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/v1.0/healthz", w.HTTPPort))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("weft did not become healthy within 30 s:\n%s", w.Logs())
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// Logs returns what the runtime printed so far.
func (w *Weft) Logs() string {
	w.logMu.Lock()
	defer w.logMu.Unlock()
	return w.log.String()
}

// Pid returns the runtime's process id.
func (w *Weft) Pid() int { return w.cmd.Process.Pid }

// Kill kills the runtime with SIGKILL and waits for it to exit.
func (w *Weft) Kill() {
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.exited
}

// Restart starts the runtime again with the same ports, paths and data dir.
func (w *Weft) Restart() {
	w.t.Helper()
	select {
	case <-w.exited:
	default:
		w.Kill()
	}
	w.start()
}

// Stop terminates the runtime (SIGTERM, then SIGKILL after 5 s).
func (w *Weft) Stop() {
	if w.cmd == nil {
		return
	}
	select {
	case <-w.exited:
		return
	default:
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.exited:
	case <-time.After(5 * time.Second):
		w.Kill()
	}
}

// Exited is closed when the process has exited.
func (w *Weft) Exited() <-chan struct{} { return w.exited }

// GRPCAddr is the TCP address of the gRPC API.
func (w *Weft) GRPCAddr() string { return fmt.Sprintf("127.0.0.1:%d", w.GRPCPort) }
