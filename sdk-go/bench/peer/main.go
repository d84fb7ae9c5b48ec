// Command peer measures Weft side by side with Dapr's own sidecar (daprd)
// on one machine, with the same clients, in one run whose cells alternate
// between the sidecars in rounds so that drift on the host hits both:
//
//   - state: GetState / SaveState of a 100-byte value through each sidecar's
//     gRPC port with the official Dapr Go SDK (1 and 16 callers), plus
//     weft's sdk-go over shared memory for GetState;
//   - invocation: app A → sidecar A → sidecar B → app B (an echo
//     AppCallback server), open loop at a fixed rate and closed loop with
//     16 callers, against app A → app B directly;
//   - pub/sub: PublishEvent through sidecar B → OnTopicEvent on app B, one
//     ordering key and many keys, with a per-key order check;
//   - the sidecars' resident memory (VmRSS) idle and under load, and their
//     CPU time per call over each measured phase.
//
// Every Dapr Go SDK client and both apps run in peerleg child processes
// (the SDK's protobuf types and sdk-go's register the same names). Run it
// through scripts/peer-bench.sh, which builds daprd and the binaries:
//
//	peer -weft target/release/weft -daprd .cache/daprd/daprd -peerleg /tmp/peerleg [-rounds 3]
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"weft.dev/sdk-go/bench/internal/lat"
	"weft.dev/sdk-go/client"
	commonv1 "weft.dev/sdk-go/proto/dapr/common/v1"
	weftv1 "weft.dev/sdk-go/proto/weft/runtime/v1"
)

var (
	weftBin    = flag.String("weft", "", "release weft binary")
	daprdBin   = flag.String("daprd", "", "daprd binary")
	sentryBin  = flag.String("sentry", "", "Dapr sentry binary: when set, a third pair of daprd with mTLS (certificates from this sentry) joins the invocation cells")
	peerleg    = flag.String("peerleg", "", "peerleg binary (go build ./peer/peerleg)")
	rounds     = flag.Int("rounds", 3, "rounds over all cells")
	warm       = flag.Duration("warmup", time.Second, "warm-up per cell")
	stateDur   = flag.Duration("state-duration", 3*time.Second, "measured time per state cell")
	invokeDur  = flag.Duration("invoke-duration", 5*time.Second, "measured time per invocation cell")
	rate       = flag.Int("rate", 1000, "open-loop invocation rate, calls/s")
	callers    = flag.Int("callers", 16, "closed-loop callers (state and invocation)")
	events1    = flag.Int("events-one-key", 5000, "events per pub/sub cell with one key")
	eventsMany = flag.Int("events-many-keys", 20000, "events per pub/sub cell with many keys")
	keys       = flag.Int("keys", 1000, "keys of the many-keys cell")
	publishers = flag.Int("publishers", 16, "publishing goroutines of the many-keys cell")
	bulk       = flag.Int("bulk", 100, "events per BulkPublishEvent call in the one-key bulk cell (0: no such cell)")
	cellsFlag  = flag.String("cells", "state,invoke,pubsub", "which groups of cells to run")
	keep       = flag.Bool("keep", false, "keep the temporary directory (logs)")
)

var tmp string

func main() {
	flag.Parse()
	for name, p := range map[string]string{"-weft": *weftBin, "-daprd": *daprdBin, "-peerleg": *peerleg} {
		if _, err := os.Stat(p); err != nil {
			log.Fatalf("%s %q: %v", name, p, err)
		}
	}
	var err error
	tmp, err = os.MkdirTemp("", "weft-peer-")
	if err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-sig
		stopAll()
		if !*keep {
			os.RemoveAll(tmp)
		}
		os.Exit(130)
	}()
	code := run()
	stopAll()
	if !*keep {
		os.RemoveAll(tmp)
	} else {
		fmt.Println("logs in", tmp)
	}
	os.Exit(code)
}

// === processes ===

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

func start(name string, env []string, bin string, args ...string) *proc {
	logf, err := os.Create(filepath.Join(tmp, name+".log"))
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func stopAll() {
	procsMu.Lock()
	ps := procs
	procs = nil
	procsMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitHealthy(p *proc, httpPort int) {
	deadline := time.Now().Add(60 * time.Second)
	c := http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			log.Fatalf("%s exited during start-up (log %s)", p.name, filepath.Join(tmp, p.name+".log"))
		default:
		}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/v1.0/healthz", httpPort))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Fatalf("%s not healthy after 60 s (log %s)", p.name, filepath.Join(tmp, p.name+".log"))
}

func waitPort(port int) {
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("nothing listens on %d", port)
}

func write(path, s string) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		log.Fatal(err)
	}
}

const component = `apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: %s
spec:
  type: %s
  version: v1
  metadata: []
`

// === sidecars ===

// sidecar is one daprd or weft process.
type sidecar struct {
	*proc
	grpc, http int
	peerPort   int    // the port other sidecars call (daprd's internal gRPC, weft's mesh)
	shm        string // weft's shared-memory socket
}

// pair: sidecar A (the caller's, and the state leg's) and sidecar B (in
// front of the app; pub/sub goes through it).
type pair struct {
	name   string // "daprd", "weft", "daprd mTLS"
	a, b   *sidecar
	app    *proc
	appCtl int
	appGRP int
}

func startApp(name string) (*proc, int, int) {
	port, ctl := freePort(), freePort()
	p := start(name, nil, *peerleg, "app", "-port", strconv.Itoa(port), "-ctl", strconv.Itoa(ctl))
	waitPort(port)
	waitPort(ctl)
	return p, port, ctl
}

type sentryInfo struct {
	addr, anchors, trustDomain string
}

func startDaprd(name, appID string, appPort int, mtls *sentryInfo) *pair {
	dir := filepath.Join(tmp, name)
	res := filepath.Join(dir, "resources")
	write(filepath.Join(res, "state.yaml"), fmt.Sprintf(component, "statestore", "state.in-memory"))
	write(filepath.Join(res, "pubsub.yaml"), fmt.Sprintf(component, "pubsub", "pubsub.in-memory"))
	internalB := freePort()
	// No mDNS (multicast) and no Kubernetes here: the kubernetes resolver
	// with an address template resolves every app id to sidecar B's
	// internal gRPC port on loopback.
	cfg := filepath.Join(dir, "config.yaml")
	write(cfg, fmt.Sprintf(`apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: peer
spec:
  nameResolution:
    component: kubernetes
    configuration:
      template: "127.0.0.1:%d"
`, internalB))
	mk := func(id string, internal, app int) *sidecar {
		s := &sidecar{grpc: freePort(), http: freePort()}
		if internal == 0 {
			internal = freePort()
		}
		s.peerPort = internal
		args := []string{"--app-id", id, "--mode", "standalone",
			"--dapr-grpc-port", strconv.Itoa(s.grpc), "--dapr-http-port", strconv.Itoa(s.http),
			"--dapr-internal-grpc-port", strconv.Itoa(internal), "--metrics-port", strconv.Itoa(freePort()),
			"--dapr-listen-addresses", "127.0.0.1", "--dapr-internal-grpc-listen-address", "127.0.0.1",
			"--metrics-listen-address", "127.0.0.1", "--resources-path", res, "--config", cfg,
			"--log-level", "warn", "--placement-host-address", ""}
		var env []string
		if app != 0 {
			args = append(args, "--app-port", strconv.Itoa(app), "--app-protocol", "grpc")
		}
		if mtls != nil {
			args = append(args, "--enable-mtls", "--sentry-address", mtls.addr)
			env = append(env, "DAPR_TRUST_ANCHORS="+mtls.anchors, "NAMESPACE=default")
		}
		s.proc = start(name+"-"+id, env, *daprdBin, args...)
		return s
	}
	p := &pair{name: name}
	p.b = mk(appID+"-b", internalB, appPort)
	p.a = mk(appID+"-a", 0, 0)
	return p
}

func startWeftPair(appPort int) *pair {
	return startWeftPairAs("weft", "peer", filepath.Join(tmp, "weft"), appPort)
}

// startWeftPairAs starts weft sidecars <prefix>-a and <prefix>-b in dir;
// B forwards to the app on appPort, or has no app port when it is 0 (its
// app then serves invocations over a stream).
func startWeftPairAs(name, prefix, dir string, appPort int) *pair {
	res := filepath.Join(dir, "resources")
	write(filepath.Join(res, "state.yaml"), fmt.Sprintf(component, "statestore", "state.in-memory"))
	write(filepath.Join(res, "pubsub.yaml"), fmt.Sprintf(component, "pubsub", "pubsub.embedded"))
	ca := filepath.Join(dir, "ca")
	mustRun(*weftBin, "ca", "init", "--dir", ca)
	env := []string{"WEFT_LOCAL_REGISTRY_DIR=" + filepath.Join(dir, "registry")}
	mk := func(id string, app int) *sidecar {
		certs := filepath.Join(dir, "certs", id)
		mustRun(*weftBin, "ca", "issue", "--ca-dir", ca, "--app-id", id, "--out", certs)
		s := &sidecar{grpc: freePort(), http: freePort(), shm: filepath.Join(dir, id+"-shm.sock"), peerPort: freePort()}
		args := []string{"run", "--app-id", id, "--resources-path", res, "--data-dir", filepath.Join(dir, id),
			"--grpc-port", strconv.Itoa(s.grpc), "--http-port", strconv.Itoa(s.http),
			"--shm-socket", s.shm, "--mesh-port", strconv.Itoa(s.peerPort), "--log", "warn",
			"--mtls-cert", filepath.Join(certs, "cert.pem"), "--mtls-key", filepath.Join(certs, "key.pem"),
			"--mtls-trust-bundle", filepath.Join(certs, "ca.pem")}
		if app != 0 {
			args = append(args, "--app-port", strconv.Itoa(app))
		}
		s.proc = start("weft-"+id, env, *weftBin, args...)
		return s
	}
	p := &pair{name: name}
	p.b = mk(prefix+"-b", appPort)
	p.a = mk(prefix+"-a", 0)
	return p
}

func mustRun(bin string, args ...string) {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		log.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
}

// startSentry runs Dapr's sentry standalone; it creates its own root and
// issuer in an empty credentials directory.
func startSentry() *sentryInfo {
	dir := filepath.Join(tmp, "sentry")
	creds := filepath.Join(dir, "creds")
	if err := os.MkdirAll(creds, 0o755); err != nil {
		log.Fatal(err)
	}
	port := freePort()
	health := freePort()
	write(filepath.Join(dir, "config.yaml"), "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprsystem\nspec:\n  mtls:\n    enabled: true\n    workloadCertTTL: 24h\n    allowedClockSkew: 15m\n")
	p := start("sentry", nil, *sentryBin, "--issuer-credentials", creds, "--trust-domain", "localhost",
		"--port", strconv.Itoa(port), "--listen-address", "127.0.0.1", "--healthz-port", strconv.Itoa(health),
		"--healthz-listen-address", "127.0.0.1", "--metrics-port", strconv.Itoa(freePort()), "--metrics-listen-address", "127.0.0.1", "--config", filepath.Join(dir, "config.yaml"),
		"--log-level", "warn")
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(creds, "ca.crt")); err == nil && len(b) > 0 {
			waitPort(port)
			return &sentryInfo{addr: "127.0.0.1:" + strconv.Itoa(port), anchors: string(b), trustDomain: "localhost"}
		}
		select {
		case <-p.done:
			log.Fatalf("sentry exited (log %s)", filepath.Join(tmp, "sentry.log"))
		default:
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Fatal("sentry wrote no ca.crt in 30 s")
	return nil
}

// tlsProbe reports whether the port speaks TLS and which identity its
// certificate carries (without a client certificate a mutual-TLS server
// still shows its own in the handshake, or refuses right after it).
func tlsProbe(port int) string {
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", "127.0.0.1:"+strconv.Itoa(port), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		return "no TLS handshake (" + err.Error() + ")"
	}
	defer c.Close()
	st := c.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return "TLS, no certificate"
	}
	ids := []string{}
	for _, u := range st.PeerCertificates[0].URIs {
		ids = append(ids, u.String())
	}
	return fmt.Sprintf("TLS 1.%d, certificate %s", st.Version-tls.VersionTLS10, strings.Join(ids, " "))
}

// === /proc ===

func cpuTicks(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func statusKB(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

func hostBusy() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	var busy int64
	for i, v := range strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:] {
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return busy
}

// cpuWindow: CPU ticks (10 ms) of the given processes and of the host.
type cpuWindow struct {
	pids []int
	p0   []int64
	h0   int64
	t0   time.Time
}

func openWindow(pids ...int) *cpuWindow {
	w := &cpuWindow{pids: pids, h0: hostBusy(), t0: time.Now()}
	for _, p := range pids {
		w.p0 = append(w.p0, cpuTicks(p))
	}
	return w
}

// close returns each process's CPU in ms and the host's load in cores.
func (w *cpuWindow) close() ([]float64, float64) {
	out := make([]float64, len(w.pids))
	for i, p := range w.pids {
		out[i] = float64(cpuTicks(p)-w.p0[i]) * 10
	}
	el := time.Since(w.t0).Seconds()
	return out, float64(hostBusy()-w.h0) / 100 / el
}

// === child legs ===

// leg runs peerleg with args; at its "start" line it opens a CPU window
// over pids, and closes it at the result line. Returns the JSON line.
func leg(pids []int, args ...string) ([]byte, []float64, float64) {
	cmd := exec.Command(*peerleg, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	r := bufio.NewReader(out)
	var w *cpuWindow
	var res []byte
	var cpu []float64
	var load float64
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			if strings.TrimSpace(string(line)) == "start" {
				w = openWindow(pids...)
			} else if res == nil {
				if w != nil {
					cpu, load = w.close()
				}
				res = line
			}
		}
		if err == io.EOF {
			break
		} else if err != nil {
			log.Fatal(err)
		}
	}
	if err := cmd.Wait(); err != nil {
		log.Fatalf("peerleg %s: %v", strings.Join(args, " "), err)
	}
	if res == nil {
		log.Fatalf("peerleg %s printed no result", strings.Join(args, " "))
	}
	return res, cpu, load
}

// === results ===

// cell: one measured figure set, per round.
type cell struct {
	p50, p90, p99, ops float64
	calls              int
	errors             int
	cpuUs              []float64 // CPU µs per call, per sidecar measured
	load               float64   // host load during the cell, cores
	extra              map[string]float64
}

type results struct {
	order []string
	m     map[string][]cell
}

func (r *results) add(key string, c cell) {
	if r.m == nil {
		r.m = map[string][]cell{}
	}
	if _, ok := r.m[key]; !ok {
		r.order = append(r.order, key)
	}
	r.m[key] = append(r.m[key], c)
}

var res results

func perCall(ms []float64, calls int) []float64 {
	out := make([]float64, len(ms))
	for i, v := range ms {
		if calls > 0 {
			out[i] = v * 1000 / float64(calls)
		}
	}
	return out
}

// === run ===

func run() int {
	load, _ := os.ReadFile("/proc/loadavg")
	host, _ := os.Hostname()
	fmt.Printf("host %s, %d CPUs, %s, load %s", host, runtime.NumCPU(), runtime.Version(), load)
	fmt.Printf("daprd: %s\nweft: %s\n", version(*daprdBin, "--version"), version(*weftBin, "--version"))

	appD, appDPort, appDCtl := startApp("app-daprd")
	appW, appWPort, appWCtl := startApp("app-weft")
	dp := startDaprd("daprd", "peer", appDPort, nil)
	dp.app, dp.appGRP, dp.appCtl = appD, appDPort, appDCtl
	wp := startWeftPair(appWPort)
	wp.app, wp.appGRP, wp.appCtl = appW, appWPort, appWCtl
	pairs := []*pair{dp, wp}
	var mp *pair
	if *sentryBin != "" {
		si := startSentry()
		mp = startDaprd("daprd-mtls", "peerm", appDPort, si)
		mp.name = "daprd mTLS"
		mp.app, mp.appGRP, mp.appCtl = appD, appDPort, appDCtl
	}
	all := append([]*pair{}, pairs...)
	if mp != nil {
		all = append(all, mp)
	}
	for _, p := range all {
		waitHealthy(p.a.proc, p.a.http)
		waitHealthy(p.b.proc, p.b.http)
	}
	fmt.Println("all sidecars healthy")
	for _, p := range all {
		fmt.Printf("%s B, sidecar-to-sidecar port %d: %s\n", p.name, p.b.peerPort, tlsProbe(p.b.peerPort))
	}
	// Idle memory: 2 s after every sidecar is healthy, before any call.
	time.Sleep(2 * time.Second)
	idle := map[string]int64{}
	idleAnon := map[string]int64{}
	for _, p := range all {
		idle[p.name+" A"] = statusKB(p.a.pid(), "VmRSS")
		idle[p.name+" B"] = statusKB(p.b.pid(), "VmRSS")
		idleAnon[p.name+" A"] = statusKB(p.a.pid(), "RssAnon")
		idleAnon[p.name+" B"] = statusKB(p.b.pid(), "RssAnon")
	}
	// Peak RSS (and its anonymous part: heap and stacks, not the pages of
	// the binary, which every process running it shares) under load,
	// sampled every 100 ms.
	peak := map[string]int64{}
	peakAnon := map[string]int64{}
	var peakMu sync.Mutex
	stopSampler := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSampler:
				return
			case <-t.C:
			}
			peakMu.Lock()
			for _, p := range all {
				for _, s := range []struct {
					k  string
					sc *sidecar
				}{{p.name + " A", p.a}, {p.name + " B", p.b}} {
					if v := statusKB(s.sc.pid(), "VmRSS"); v > peak[s.k] {
						peak[s.k] = v
					}
					if v := statusKB(s.sc.pid(), "RssAnon"); v > peakAnon[s.k] {
						peakAnon[s.k] = v
					}
				}
			}
			peakMu.Unlock()
		}
	}()

	groups := strings.Split(*cellsFlag, ",")
	has := func(g string) bool {
		for _, x := range groups {
			if x == g {
				return true
			}
		}
		return false
	}
	ctx := context.Background()
	var err error
	var shmPath *shmInvoke
	if has("invoke") {
		sp := startWeftPairAs("weft, sdk-go over shared memory", "peers", filepath.Join(tmp, "weft-shm"), 0)
		waitHealthy(sp.a.proc, sp.a.http)
		waitHealthy(sp.b.proc, sp.b.http)
		if shmPath, err = newShmInvoke(ctx, sp); err != nil {
			log.Printf("shared-memory invocation path: %v", err)
			return 1
		}
		defer shmPath.close()
	}
	shmC, err := client.New(ctx, client.WithTransport(client.TransportShm), client.WithAppID("peer-a"), client.WithShmSocket(wp.a.shm), client.WithAddress("127.0.0.1:"+strconv.Itoa(wp.a.grpc)))
	if err != nil {
		log.Printf("sdk-go shm client: %v", err)
		return 1
	}
	defer shmC.Close()

	if has("pubsub") {
		// Prove each subscription is live (and warm the path up).
		for _, p := range pairs {
			pubsubCell(p, "check", 1, 1, 20, 1, false)
		}
	}
	for r := 1; r <= *rounds; r++ {
		fmt.Printf("\n== round %d ==\n", r)
		if has("state") {
			for _, op := range []string{"get", "save"} {
				for _, n := range []int{1, *callers} {
					for _, p := range pairs {
						stateCell(p, op, n)
					}
					if op == "get" {
						shmCell(shmC, wp, n)
					}
				}
			}
		}
		if has("invoke") {
			invokeCells(pairs, mp, dp, shmPath)
		}
		if has("pubsub") {
			for _, p := range pairs {
				pubsubCell(p, "one key", 1, 1, *events1, 1, true)
			}
			if *bulk > 1 {
				for _, p := range pairs {
					pubsubCell(p, fmt.Sprintf("one key, bulk %d", *bulk), 1, 1, *eventsMany, *bulk, true)
				}
			}
			for _, p := range pairs {
				pubsubCell(p, "many keys", *keys, *publishers, *eventsMany, 1, true)
			}
		}
	}
	close(stopSampler)
	hwm := map[string]int64{}
	for _, p := range all {
		hwm[p.name+" A"] = statusKB(p.a.pid(), "VmHWM")
		hwm[p.name+" B"] = statusKB(p.b.pid(), "VmHWM")
	}
	peakMu.Lock()
	report(all, idle, peak, hwm, idleAnon, peakAnon)
	peakMu.Unlock()
	return 0
}

func version(bin, flag string) string {
	out, _ := exec.Command(bin, flag).CombinedOutput()
	return strings.TrimSpace(string(out))
}

func stateCell(p *pair, op string, n int) {
	out, cpu, load := leg([]int{p.a.pid()}, "state", "-addr", "127.0.0.1:"+strconv.Itoa(p.a.grpc), "-op", op,
		"-conc", strconv.Itoa(n), "-warmup", warm.String(), "-duration", stateDur.String())
	var r lat.Result
	if err := json.Unmarshal(out, &r); err != nil {
		log.Fatalf("state leg: %q: %v", out, err)
	}
	key := fmt.Sprintf("state|%s|%d|Dapr Go SDK, TCP → %s", op, n, p.name)
	c := cell{p50: r.P50us, p99: r.P99us, ops: r.OpsPerS, calls: r.Ops, errors: r.Errors, cpuUs: perCall(cpu, r.Ops), load: load}
	res.add(key, c)
	fmt.Printf("  %-40s %s  sidecar CPU %.1f µs/call  host %.2f cores\n", key, r, c.cpuUs[0], load)
	if r.Errors > 0 {
		fmt.Printf("    first error: %s\n", r.FirstEr)
	}
}

func shmCell(c *client.Client, p *pair, n int) {
	ctx := context.Background()
	names := make([]string, 100)
	for i := range names {
		names[i] = "peer-key-" + strconv.Itoa(i)
	}
	var mu sync.Mutex
	i := 0
	f := func() error {
		mu.Lock()
		i++
		k := names[i%len(names)]
		mu.Unlock()
		it, err := c.GetState(ctx, "statestore", k, nil)
		if err == nil && len(it.Value) != 100 {
			return fmt.Errorf("read %d bytes", len(it.Value))
		}
		return err
	}
	lat.Run(n, 0, *warm, f)
	w := openWindow(p.a.pid())
	r := lat.Run(n, 0, *stateDur, f)
	cpu, load := w.close()
	key := fmt.Sprintf("state|get|%d|sdk-go, shared memory → weft", n)
	cl := cell{p50: r.P50us, p99: r.P99us, ops: r.OpsPerS, calls: r.Ops, errors: r.Errors, cpuUs: perCall(cpu, r.Ops), load: load}
	res.add(key, cl)
	fmt.Printf("  %-40s %s  sidecar CPU %.1f µs/call  host %.2f cores\n", key, r, cl.cpuUs[0], load)
}

func invokeCells(pairs []*pair, mp, dp *pair, sh *shmInvoke) {
	type path struct {
		name  string
		args  []string
		pids  []int
		local func() error // measured in this process instead of a peerleg
	}
	paths := []path{{name: "direct (app A → app B)", args: []string{"-direct", "127.0.0.1:" + strconv.Itoa(dp.appGRP)}}}
	withM := append([]*pair{}, pairs...)
	if mp != nil {
		withM = append(withM, mp)
	}
	for _, p := range withM {
		id := "peer-b"
		if p == mp {
			id = "peerm-b"
		}
		paths = append(paths, path{name: p.name, args: []string{"-addr", "127.0.0.1:" + strconv.Itoa(p.a.grpc), "-app-id", id}, pids: []int{p.a.pid(), p.b.pid()}})
	}
	if sh != nil {
		paths = append(paths, path{name: sh.p.name, pids: []int{sh.p.a.pid(), sh.p.b.pid()}, local: sh.call})
	}
	for _, mode := range []string{"rate", "closed"} {
		for _, pa := range paths {
			var r lat.Open
			var cpu []float64
			var load float64
			if pa.local != nil {
				r, cpu, load = localInvoke(pa.local, pa.pids, mode)
			} else {
				args := append([]string{"invoke"}, pa.args...)
				args = append(args, "-warmup", warm.String(), "-duration", invokeDur.String())
				if mode == "rate" {
					args = append(args, "-rate", strconv.Itoa(*rate))
				} else {
					args = append(args, "-rate", "0", "-conc", strconv.Itoa(*callers))
				}
				var out []byte
				out, cpu, load = leg(pa.pids, args...)
				if err := json.Unmarshal(out, &r); err != nil {
					log.Fatalf("invoke leg: %q: %v", out, err)
				}
			}
			key := "invoke|" + mode + "|" + pa.name
			c := cell{p50: r.P50us, p90: r.P90us, p99: r.P99us, ops: r.OpsPerS, calls: r.Calls, errors: r.Errors, cpuUs: perCall(cpu, r.Calls), load: load}
			res.add(key, c)
			fmt.Printf("  %-40s p50 %.0f p90 %.0f p99 %.0f µs  %.0f calls/s  %d calls %d errors  CPU µs/call %v  host %.2f cores\n",
				key, r.P50us, r.P90us, r.P99us, r.OpsPerS, r.Calls, r.Errors, fmtF(c.cpuUs, 1), load)
			if r.Errors > 0 {
				fmt.Printf("    first error: %s\n", r.FirstEr)
			}
		}
	}
}

// localInvoke measures call in this process as peerleg's invoke mode
// does: open loop at -rate, or -callers closed-loop callers; the
// sidecars' CPU is sampled over the measured phase only.
func localInvoke(call func() error, pids []int, mode string) (lat.Open, []float64, float64) {
	if mode == "rate" {
		lat.OpenLoop(call, *rate, *warm)
		w := openWindow(pids...)
		o := lat.OpenLoop(call, *rate, *invokeDur)
		cpu, load := w.close()
		return o, cpu, load
	}
	lat.Run(*callers, 0, *warm, call)
	w := openWindow(pids...)
	o := lat.Run(*callers, 0, *invokeDur, call)
	cpu, load := w.close()
	return o.Open(), cpu, load
}

// shmInvoke is the invocation path with weft's own SDK on both ends over
// shared memory: app A calls InvokeMethod on sidecar A's shared-memory
// transport; app B, behind sidecar B (no app port), answers over a
// ServeInvocations stream on B's shared-memory transport. Both apps live
// in this process, as the Dapr SDK apps live in peerleg processes.
type shmInvoke struct {
	p       *pair
	a, b    *client.Client
	stream  *client.InvocationStream
	content *client.DataContent
}

func newShmInvoke(ctx context.Context, p *pair) (*shmInvoke, error) {
	open := func(sc *sidecar, id string) (*client.Client, error) {
		return client.New(ctx, client.WithTransport(client.TransportShm), client.WithAppID(id),
			client.WithShmSocket(sc.shm), client.WithAddress("127.0.0.1:"+strconv.Itoa(sc.grpc)))
	}
	b, err := open(p.b, "peers-b")
	if err != nil {
		return nil, fmt.Errorf("app B: %w", err)
	}
	st, err := b.ServeInvocations(ctx)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("app B: ServeInvocations: %w", err)
	}
	go func() {
		// Echo, one invocation after another (the answer is immediate).
		for {
			inv, err := st.Recv()
			if err != nil {
				return
			}
			req := inv.GetRequest()
			_ = st.Send(&weftv1.InvocationResult{Id: inv.GetId(), Response: &commonv1.InvokeResponse{Data: req.GetData(), ContentType: req.GetContentType()}})
		}
	}()
	a, err := open(p.a, "peers-a")
	if err != nil {
		st.Close()
		b.Close()
		return nil, fmt.Errorf("app A: %w", err)
	}
	body := make([]byte, 1024)
	for i := range body {
		body[i] = byte(i)
	}
	return &shmInvoke{p: p, a: a, b: b, stream: st, content: &client.DataContent{ContentType: "application/octet-stream", Data: body}}, nil
}

func (s *shmInvoke) call() error {
	out, err := s.a.InvokeMethodWithContent(context.Background(), "peers-b", "echo", "post", s.content)
	if err == nil && len(out) != len(s.content.Data) {
		return fmt.Errorf("echo returned %d bytes", len(out))
	}
	return err
}

func (s *shmInvoke) close() {
	s.stream.Close()
	s.a.Close()
	s.b.Close()
}

type appStats struct {
	Received   int   `json:"received"`
	Violations int   `json:"violations"`
	Reordered  int   `json:"reordered"`
	Keys       int   `json:"keys"`
	FirstNs    int64 `json:"first_ns"`
	LastNs     int64 `json:"last_ns"`
	BadEvents  int   `json:"bad_events"`
}

func ctlGet(port int, path string, v any) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			log.Fatal(err)
		}
	}
}

type publishResult struct {
	Events  int    `json:"events"`
	StartNs int64  `json:"start_ns"`
	EndNs   int64  `json:"end_ns"`
	Errors  int    `json:"errors"`
	FirstEr string `json:"first_error"`
}

func pubsubCell(p *pair, label string, nkeys, pubs, n, batch int, record bool) {
	ctlGet(p.appCtl, "/reset", nil)
	// The publisher sends one warm-up event on another topic before its
	// "start" line; the app only counts the measured topic.
	cmd := exec.Command(*peerleg, "publish", "-addr", "127.0.0.1:"+strconv.Itoa(p.b.grpc), "-n", strconv.Itoa(n),
		"-keys", strconv.Itoa(nkeys), "-publishers", strconv.Itoa(pubs), "-batch", strconv.Itoa(batch))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	rd := bufio.NewReader(out)
	line, _ := rd.ReadString('\n')
	if strings.TrimSpace(line) != "start" {
		log.Fatalf("publish leg printed %q", line)
	}
	w := openWindow(p.b.pid())
	line, _ = rd.ReadString('\n')
	if err := cmd.Wait(); err != nil {
		log.Fatalf("publish leg: %v", err)
	}
	var pr publishResult
	if err := json.Unmarshal([]byte(line), &pr); err != nil {
		log.Fatalf("publish leg printed %q: %v", line, err)
	}
	// Wait for every event (or for deliveries to stop for 10 s).
	var st appStats
	lastCount, lastChange := -1, time.Now()
	for {
		ctlGet(p.appCtl, "/stats", &st)
		if st.Received >= n-pr.Errors {
			break
		}
		if st.Received != lastCount {
			lastCount, lastChange = st.Received, time.Now()
		} else if time.Since(lastChange) > 10*time.Second {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cpu, load := w.close()
	if !record {
		if st.Received < n {
			log.Fatalf("%s: subscription check: %d of %d events arrived", p.name, st.Received, n)
		}
		return
	}
	el := float64(st.LastNs-pr.StartNs) / 1e9
	pubRate := float64(n) / (float64(pr.EndNs-pr.StartNs) / 1e9)
	c := cell{ops: float64(st.Received) / el, calls: st.Received, errors: pr.Errors, cpuUs: perCall(cpu, st.Received), load: load,
		extra: map[string]float64{"violations": float64(st.Violations), "reordered": float64(st.Reordered), "lost": float64(n - pr.Errors - st.Received), "pubrate": pubRate}}
	key := "pubsub|" + label + "|" + p.name
	res.add(key, c)
	fmt.Printf("  %-40s %d/%d delivered, %.0f deliveries/s (publish %.0f/s), %d order violations (%d older than one seen), %d publish errors, sidecar CPU %.1f µs/event, host %.2f cores\n",
		key, st.Received, n, c.ops, pubRate, st.Violations, st.Reordered, pr.Errors, c.cpuUs[0], load)
	if pr.Errors > 0 {
		fmt.Printf("    first error: %s\n", pr.FirstEr)
	}
}

// === report ===

func fmtF(v []float64, prec int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'f', prec, 64)
	}
	return strings.Join(s, " / ")
}

func col(cs []cell, f func(cell) float64, prec int) string {
	v := make([]float64, len(cs))
	for i, c := range cs {
		v[i] = f(c)
	}
	return fmtF(v, prec)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64{}, v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func med(cs []cell, f func(cell) float64) float64 {
	v := make([]float64, len(cs))
	for i, c := range cs {
		v[i] = f(c)
	}
	return median(v)
}

func report(all []*pair, idle, peak, hwm, idleAnon, peakAnon map[string]int64) {
	fmt.Printf("\n### Results (rounds separated by /)\n")
	fmt.Printf("\nState, 100-byte value:\n\n| op | callers | client → sidecar | p50 µs | p99 µs | ops/s | sidecar CPU µs/call | host load, cores |\n|---|---:|---|---:|---:|---:|---:|---:|\n")
	for _, k := range res.order {
		f := strings.Split(k, "|")
		if f[0] != "state" {
			continue
		}
		cs := res.m[k]
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3],
			col(cs, func(c cell) float64 { return c.p50 }, 1), col(cs, func(c cell) float64 { return c.p99 }, 0),
			col(cs, func(c cell) float64 { return c.ops }, 0), col(cs, func(c cell) float64 { return c.cpuUs[0] }, 1),
			col(cs, func(c cell) float64 { return c.load }, 2))
	}
	fmt.Printf("\nState ratios (medians over rounds):\n\n")
	for _, op := range []string{"get", "save"} {
		for _, n := range []int{1, *callers} {
			d := res.m[fmt.Sprintf("state|%s|%d|Dapr Go SDK, TCP → daprd", op, n)]
			w := res.m[fmt.Sprintf("state|%s|%d|Dapr Go SDK, TCP → weft", op, n)]
			if len(d) == 0 || len(w) == 0 {
				continue
			}
			fmt.Printf("- %s, %d caller(s): p50 daprd/weft %.2f×, p99 %.2f×, ops/s weft/daprd %.2f×, CPU/call weft/daprd %.2f",
				op, n, med(d, func(c cell) float64 { return c.p50 })/med(w, func(c cell) float64 { return c.p50 }),
				med(d, func(c cell) float64 { return c.p99 })/med(w, func(c cell) float64 { return c.p99 }),
				med(w, func(c cell) float64 { return c.ops })/med(d, func(c cell) float64 { return c.ops }),
				med(w, func(c cell) float64 { return c.cpuUs[0] })/med(d, func(c cell) float64 { return c.cpuUs[0] }))
			if s := res.m[fmt.Sprintf("state|%s|%d|sdk-go, shared memory → weft", op, n)]; len(s) > 0 {
				ratios := make([]float64, min(len(s), len(d)))
				for i := range ratios {
					ratios[i] = d[i].p50 / s[i].p50
				}
				fmt.Printf("; p50 daprd (Dapr SDK) / weft (sdk-go shm): %s× per round", fmtF(ratios, 1))
			}
			fmt.Println()
		}
	}

	direct := res.m["invoke|rate|direct (app A → app B)"]
	if len(direct) > 0 {
		fmt.Printf("\nInvocation at %d calls/s, open loop, 1 KiB body (µs; added = path − direct in the same round; CPU = µs per call of sidecar A / sidecar B):\n\n", *rate)
		fmt.Printf("| path | p50 | p90 | p99 | added p50 | added p99 | CPU A | CPU B | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		added := map[string][2][]float64{}
		for _, k := range res.order {
			f := strings.Split(k, "|")
			if f[0] != "invoke" || f[1] != "rate" {
				continue
			}
			cs := res.m[k]
			a50, a99 := make([]float64, len(cs)), make([]float64, len(cs))
			for i, c := range cs {
				if i < len(direct) {
					a50[i], a99[i] = c.p50-direct[i].p50, c.p99-direct[i].p99
				}
			}
			added[f[2]] = [2][]float64{a50, a99}
			cpuA, cpuB, ad50, ad99 := "—", "—", "—", "—"
			if len(cs[0].cpuUs) == 2 {
				cpuA = col(cs, func(c cell) float64 { return c.cpuUs[0] }, 0)
				cpuB = col(cs, func(c cell) float64 { return c.cpuUs[1] }, 0)
				ad50, ad99 = fmtF(a50, 0), fmtF(a99, 0)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f[2],
				col(cs, func(c cell) float64 { return c.p50 }, 0), col(cs, func(c cell) float64 { return c.p90 }, 0),
				col(cs, func(c cell) float64 { return c.p99 }, 0), ad50, ad99, cpuA, cpuB,
				col(cs, func(c cell) float64 { return float64(c.errors) }, 0))
		}
		fmt.Printf("\nMaximum throughput, %d closed-loop callers:\n\n| path | calls/s | p50 µs | p99 µs | CPU A µs/call | CPU B µs/call | errors |\n|---|---:|---:|---:|---:|---:|---:|\n", *callers)
		for _, k := range res.order {
			f := strings.Split(k, "|")
			if f[0] != "invoke" || f[1] != "closed" {
				continue
			}
			cs := res.m[k]
			cpuA, cpuB := "—", "—"
			if len(cs[0].cpuUs) == 2 {
				cpuA = col(cs, func(c cell) float64 { return c.cpuUs[0] }, 0)
				cpuB = col(cs, func(c cell) float64 { return c.cpuUs[1] }, 0)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", f[2], col(cs, func(c cell) float64 { return c.ops }, 0),
				col(cs, func(c cell) float64 { return c.p50 }, 0), col(cs, func(c cell) float64 { return c.p99 }, 0), cpuA, cpuB,
				col(cs, func(c cell) float64 { return float64(c.errors) }, 0))
		}
		dA, wA := added["daprd"], added["weft"]
		if len(dA[0]) > 0 && len(wA[0]) > 0 {
			fmt.Printf("\nweft's added latency as a fraction of daprd's (median over rounds): p50 %.2f, p99 %.2f\n",
				median(wA[0])/median(dA[0]), median(wA[1])/median(dA[1]))
			cpu := func(name, mode string) float64 {
				return med(res.m["invoke|"+mode+"|"+name], func(c cell) float64 { return c.cpuUs[0] + c.cpuUs[1] })
			}
			fmt.Printf("weft's CPU per call (A+B) as a fraction of daprd's: %.2f at %d/s, %.2f at maximum throughput\n",
				cpu("weft", "rate")/cpu("daprd", "rate"), *rate, cpu("weft", "closed")/cpu("daprd", "closed"))
		}
		if sA := added["weft, sdk-go over shared memory"]; len(dA[0]) > 0 && len(sA[0]) > 0 {
			fmt.Printf("weft with sdk-go over shared memory (local hops), added latency as a fraction of daprd's: p50 %.2f, p99 %.2f",
				median(sA[0])/median(dA[0]), median(sA[1])/median(dA[1]))
			if mA := added["daprd mTLS"]; len(mA[0]) > 0 {
				fmt.Printf("; of daprd with mTLS: p50 %.2f, p99 %.2f", median(sA[0])/median(mA[0]), median(sA[1])/median(mA[1]))
			}
			fmt.Println()
		}
	}

	if len(res.m["pubsub|one key|weft"]) > 0 {
		fmt.Printf("\nPub/sub, PublishEvent through sidecar B → OnTopicEvent on app B:\n\n| keys | sidecar | deliveries/s | publish calls/s | order violations | older than seen | lost | sidecar CPU µs/event |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
		for _, k := range res.order {
			f := strings.Split(k, "|")
			if f[0] != "pubsub" {
				continue
			}
			cs := res.m[k]
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], col(cs, func(c cell) float64 { return c.ops }, 0),
				col(cs, func(c cell) float64 { return c.extra["pubrate"] }, 0),
				col(cs, func(c cell) float64 { return c.extra["violations"] }, 0), col(cs, func(c cell) float64 { return c.extra["reordered"] }, 0),
				col(cs, func(c cell) float64 { return c.extra["lost"] }, 0), col(cs, func(c cell) float64 { return c.cpuUs[0] }, 1))
		}
		for _, l := range []string{"one key", fmt.Sprintf("one key, bulk %d", *bulk), "many keys"} {
			d, w := res.m["pubsub|"+l+"|daprd"], res.m["pubsub|"+l+"|weft"]
			if len(d) > 0 && len(w) > 0 {
				fmt.Printf("\n%s: deliveries/s weft/daprd %.2f× (medians)", l, med(w, func(c cell) float64 { return c.ops })/med(d, func(c cell) float64 { return c.ops }))
			}
		}
		fmt.Println()
	}

	fmt.Printf("\nSidecar memory (VmRSS, MB): idle = 2 s after start, before any call; peak = highest VmRSS sampled every 100 ms during the run; HWM = VmHWM at the end\n\n| sidecar | idle | peak under load | VmHWM |\n|---|---:|---:|---:|\n")
	for _, p := range all {
		for _, s := range []string{" A", " B"} {
			k := p.name + s
			fmt.Printf("| %s | %.1f | %.1f | %.1f |\n", k, float64(idle[k])/1024, float64(peak[k])/1024, float64(hwm[k])/1024)
		}
	}
	r := func(m map[string]int64, s string) float64 { return float64(m["weft"+s]) / float64(m["daprd"+s]) }
	fmt.Printf("\nweft/daprd memory: idle A %.2f, B %.2f; peak A %.2f, B %.2f\n", r(idle, " A"), r(idle, " B"), r(peak, " A"), r(peak, " B"))
	fmt.Printf("\nAnonymous memory (RssAnon, MB: heap and stacks; the rest of VmRSS is file-backed, the binary's and libraries' pages shared by every process mapping them)\n\n| sidecar | idle | peak under load |\n|---|---:|---:|\n")
	for _, p := range all {
		for _, s := range []string{" A", " B"} {
			k := p.name + s
			fmt.Printf("| %s | %.1f | %.1f |\n", k, float64(idleAnon[k])/1024, float64(peakAnon[k])/1024)
		}
	}
	fmt.Printf("\nweft/daprd anonymous memory: idle A %.2f, B %.2f; peak A %.2f, B %.2f\n", r(idleAnon, " A"), r(idleAnon, " B"), r(peakAnon, " A"), r(peakAnon, " B"))
}
