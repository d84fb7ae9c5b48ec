// Command bench measures state GetState of a 64-byte value against one
// release `weft` with an in-memory store, in one run: sdk-go over shared
// memory, sdk-go over gRPC on the Unix socket, and the official Dapr Go SDK
// (v1.13.0) over gRPC on the same socket — p50/p99 latency and ops/s with 1
// and 8 goroutines sharing one client. Cells alternate between the legs, in
// rounds, so drift on the host hits all of them alike. Optionally it then
// runs the Rust client's benchmark (shm_bench) in the same session.
//
//	cd sdk-go/bench && go run . -weft /path/to/release/weft [-rounds 2] [-duration 3s]
//
// The Dapr SDK leg runs as a child process (daprleg, built first): its
// generated protobuf types register the same names as sdk-go's.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"weft.dev/sdk-go/bench/internal/lat"
	"weft.dev/sdk-go/client"
)

const (
	appID = "bench"
	store = "statestore"
	key   = "bench-key"
)

func main() {
	defWeft := os.Getenv("WEFT_BIN")
	if defWeft == "" {
		defWeft = filepath.Join(moduleDir(), "..", "..", "target", "release", "weft")
	}
	weftBin := flag.String("weft", defWeft, "release weft binary ($WEFT_BIN)")
	rounds := flag.Int("rounds", 2, "rounds over all cells")
	dur := flag.Duration("duration", 3*time.Second, "measured time per cell")
	warm := flag.Duration("warmup", time.Second, "warm-up per cell")
	concs := flag.String("conc", "1,8", "goroutine counts")
	legs := flag.String("legs", "shm,grpc,dapr", "legs: shm (sdk-go), grpc (sdk-go), dapr (Dapr Go SDK)")
	size := flag.Int("size", 64, "value size in bytes")
	rust := flag.String("rust-bench", "/work/bin/shm_bench", "the Rust client's shm_bench, run after the Go legs when it exists ('' to skip)")
	flag.Parse()
	if _, err := os.Stat(*weftBin); err != nil {
		log.Fatalf("weft binary %s: %v (build it with cargo build --release -p weft, or pass -weft)", *weftBin, err)
	}
	var cs []int
	for _, s := range strings.Split(*concs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			log.Fatalf("-conc: %q is not a positive number", s)
		}
		cs = append(cs, n)
	}
	legList := strings.Split(*legs, ",")
	tmp, err := os.MkdirTemp("", "weft-go-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	daprleg := filepath.Join(tmp, "daprleg")
	if slices.Contains(legList, "dapr") {
		fmt.Println("building the Dapr SDK leg …")
		b := exec.Command("go", "build", "-o", daprleg, "./daprleg")
		b.Dir = moduleDir()
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			log.Fatalf("go build ./daprleg: %v", err)
		}
	}

	w, err := startWeft(*weftBin, tmp)
	if err != nil {
		log.Fatal(err)
	}
	defer w.stop()
	ctx := context.Background()
	shmC, err := client.New(ctx, client.WithTransport(client.TransportShm), client.WithAppID(appID), client.WithShmSocket(w.shm), client.WithSocket(w.uds))
	if err != nil {
		log.Fatal(err)
	}
	defer shmC.Close()
	grpcC, err := client.New(ctx, client.WithTransport(client.TransportGRPC), client.WithSocket(w.uds))
	if err != nil {
		log.Fatal(err)
	}
	defer grpcC.Close()
	val := make([]byte, *size)
	_, _ = rand.Read(val)
	if err := shmC.SaveState(ctx, store, key, val, nil); err != nil {
		log.Fatal(err)
	}

	hostInfo()
	type cell struct {
		leg  string
		conc int
	}
	results := map[cell][]lat.Result{}
	disturbed := map[cell][]int{}
	for r := 1; r <= *rounds; r++ {
		fmt.Printf("\nround %d\n", r)
		for _, n := range cs {
			for _, leg := range legList {
				var res lat.Result
				cpu0 := sampleCPU(w.cmd.Process.Pid)
				switch leg {
				case "shm", "grpc":
					c := shmC
					if leg == "grpc" {
						c = grpcC
					}
					res = lat.Run(n, *warm, *dur, func() error {
						it, err := c.GetState(ctx, store, key, nil)
						if err == nil && len(it.Value) != *size {
							return fmt.Errorf("read %d bytes", len(it.Value))
						}
						return err
					})
				case "dapr":
					res, err = runDapr(daprleg, w.uds, n, *warm, *dur)
					if err != nil {
						log.Fatal(err)
					}
				default:
					log.Fatalf("-legs: unknown leg %q", leg)
				}
				others := sampleCPU(w.cmd.Process.Pid).othersSince(cpu0, res.ChildCPU)
				mark := ""
				if others > 20 {
					mark = "†"
					disturbed[cell{leg, n}] = append(disturbed[cell{leg, n}], len(results[cell{leg, n}]))
				}
				results[cell{leg, n}] = append(results[cell{leg, n}], res)
				fmt.Printf("  %-22s %d goroutine(s): %s  others %.0f%%%s\n", legName(leg), n, res, others, mark)
			}
		}
	}

	fmt.Printf("\n† = other processes used more than 20 %% of a core during the cell (disturbed)\n")
	fmt.Printf("\n| client | goroutines | p50 µs | p99 µs | ops/s |\n|---|---:|---:|---:|---:|\n")
	var cur []int
	join := func(rs []lat.Result, f func(lat.Result) float64, prec int) string {
		parts := make([]string, len(rs))
		for i, r := range rs {
			parts[i] = strconv.FormatFloat(f(r), 'f', prec, 64)
			if slices.Contains(cur, i) {
				parts[i] += "†"
			}
		}
		return strings.Join(parts, " / ")
	}
	for _, n := range cs {
		for _, leg := range legList {
			rs := results[cell{leg, n}]
			cur = disturbed[cell{leg, n}]
			fmt.Printf("| %s | %d | %s | %s | %s |\n", legName(leg), n,
				join(rs, func(r lat.Result) float64 { return r.P50us }, 2),
				join(rs, func(r lat.Result) float64 { return r.P99us }, 2),
				join(rs, func(r lat.Result) float64 { return r.OpsPerS }, 0))
		}
	}
	ratio := func(a, b string, n int) string {
		ra, rb := results[cell{a, n}], results[cell{b, n}]
		if len(ra) == 0 || len(rb) == 0 {
			return "-"
		}
		parts := []string{}
		for i := range min(len(ra), len(rb)) {
			parts = append(parts, fmt.Sprintf("%.0f×", rb[i].P50us/ra[i].P50us))
		}
		return strings.Join(parts, " / ")
	}
	for _, n := range cs {
		fmt.Printf("\np50 speed-up of sdk-go over shm, %d goroutine(s): vs sdk-go gRPC %s, vs Dapr Go SDK %s\n", n, ratio("shm", "grpc", n), ratio("shm", "dapr", n))
	}
	shmC.Close()
	grpcC.Close()
	w.stop()

	if *rust != "" {
		if _, err := os.Stat(*rust); err != nil {
			fmt.Printf("\nRust client: %s not found, not measured\n", *rust)
			return
		}
		fmt.Printf("\nRust client (%s --only spin, its own release weft %s):\n", *rust, *weftBin)
		cmd := exec.Command(*rust, "--only", "spin", "--iters", "200000")
		cmd.Env = append(os.Environ(), "WEFT_BIN="+*weftBin)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			log.Fatalf("shm_bench: %v", err)
		}
	}
}

func legName(leg string) string {
	switch leg {
	case "shm":
		return "sdk-go, shm"
	case "grpc":
		return "sdk-go, gRPC UDS"
	case "dapr":
		return "Dapr Go SDK, gRPC UDS"
	}
	return leg
}

func runDapr(bin, uds string, n int, warm, dur time.Duration) (lat.Result, error) {
	cmd := exec.Command(bin, "-socket", uds, "-store", store, "-key", key, "-conc", strconv.Itoa(n), "-warmup", warm.String(), "-duration", dur.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return lat.Result{}, fmt.Errorf("daprleg: %v", err)
	}
	var r lat.Result
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("daprleg printed %q: %v", out, err)
	}
	if ps := cmd.ProcessState; ps != nil {
		r.ChildCPU = ps.UserTime() + ps.SystemTime()
	}
	return r, nil
}

func moduleDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func hostInfo() {
	host, _ := os.Hostname()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("host %s, %d CPUs, GOMAXPROCS %d, %s, load %s", host, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), load)
}

type weft struct {
	cmd      *exec.Cmd
	uds, shm string
	done     chan struct{}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startWeft(bin, dir string) (*weft, error) {
	res := filepath.Join(dir, "res")
	if err := os.MkdirAll(res, 0o755); err != nil {
		return nil, err
	}
	comp := "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.in-memory\n  version: v1\n  metadata: []\n"
	if err := os.WriteFile(filepath.Join(res, "statestore.yaml"), []byte(comp), 0o644); err != nil {
		return nil, err
	}
	http := freePort()
	w := &weft{uds: filepath.Join(dir, "grpc.sock"), shm: filepath.Join(dir, "shm.sock"), done: make(chan struct{})}
	logf, err := os.Create(filepath.Join(dir, "weft.log"))
	if err != nil {
		return nil, err
	}
	w.cmd = exec.Command(bin, "run", "--app-id", appID, "--data-dir", dir, "--resources-path", res,
		"--grpc-port", strconv.Itoa(freePort()), "--http-port", strconv.Itoa(http),
		"--uds", w.uds, "--shm-socket", w.shm, "--log", "error")
	w.cmd.Stdout, w.cmd.Stderr = logf, logf
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = w.cmd.Wait(); close(w.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := httpGet(http); err == nil && resp == 204 {
			return w, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.stop()
	return nil, fmt.Errorf("weft did not become healthy (log in %s)", logf.Name())
}

func httpGet(port int) (int, error) {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/v1.0/healthz", port))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (w *weft) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	_ = w.cmd.Process.Signal(os.Interrupt)
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
	}
}

// cpuSample: busy jiffies of the host, and of this process and the runtime.
type cpuSample struct {
	at         time.Time
	host, mine int64
}

func procTicks(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func sampleCPU(weftPid int) cpuSample {
	c := cpuSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			c.host += n
		}
	}
	c.mine = procTicks("self") + procTicks(strconv.Itoa(weftPid))
	return c
}

// othersSince: CPU used by everything but this process, the runtime and
// the child leg, in % of one core (100 ticks per second).
func (c cpuSample) othersSince(old cpuSample, child time.Duration) float64 {
	el := c.at.Sub(old.at).Seconds()
	if el <= 0 {
		return 0
	}
	ticks := float64((c.host-old.host)-(c.mine-old.mine)) - child.Seconds()*100
	return max(0, ticks/el)
}
