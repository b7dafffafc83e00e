// etcdload: the points op of tools/bench-compare on an etcd 3.4 cluster.
//
//	etcdload -endpoints A,B,C -load -members 100000 -points 10000
//	etcdload -endpoints A,B,C -inflight N -secs S -members 100000 [-latency-csv F]
//
// A member is the key m/ID (ID = 0..members-1) whose value is its balance in decimal.
// One op picks a member uniformly, then 70 % of the time accrues 1..1000 points and
// 30 % of the time redeems 1..1000 points if the balance stays >= 0 (else the op is
// rejected and writes nothing). It reads m/ID (a linearizable Get, etcd's default) and
// then commits one transaction:
//
//	If(mod_revision(m/ID) == the revision read && create_revision(l/REQID) == 0)
//	Then(Put m/ID new balance, Put l/REQID ledger row)
//	Else(Get l/REQID)
//
// REQID is a random 128-bit request id, chosen once per op. A failed compare means
// another op changed the member in between: the op reads again and retries with the
// same REQID, and its latency is from the first read to the answer that settled it.
// The Else branch tells that case from the other way a compare fails, the row already
// being there (a transaction the client library re-sent after a broken connection had
// landed the first time): then the op is done. The row is never written twice.
//
// -inflight N starts N goroutines, each with its own client connection (N clients,
// like pgbench -c N), each keeping one op in flight for -secs seconds. All of them talk
// to the leader only (found with Status on every endpoint), so no op pays a follower's
// forwarding hop. The result is one JSON object on stdout.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	mrand "math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

const opTimeout = 10 * time.Second

type result struct {
	System    string             `json:"system"`
	Inflight  int                `json:"inflight"`
	Seconds   float64            `json:"seconds"`
	Ops       int64              `json:"ops"`
	OpsPerS   float64            `json:"ops_per_s"`
	Rejected  int64              `json:"rejected"`
	Retries   int64              `json:"retries"`
	Errors    int64              `json:"errors"`
	Leader    string             `json:"leader"`
	LatencyMs map[string]float64 `json:"lat_ms"`
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcdload: "+format+"\n", args...)
	os.Exit(1)
}

func memberKey(id int) string { return "m/" + strconv.Itoa(id) }

func newClient(endpoints []string) *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		die("connect %v: %v", endpoints, err)
	}
	return c
}

// leader asks every endpoint for its status and returns the one that is the leader.
func leader(endpoints []string) string {
	c := newClient(endpoints)
	defer c.Close()
	for _, ep := range endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := c.Status(ctx, ep)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			return ep
		}
	}
	die("no leader among %v", endpoints)
	return ""
}

// load writes every member with its starting balance, 100 keys per transaction
// (etcd's default limit is 128 operations per transaction), from a few goroutines.
func load(endpoints []string, members, points int) {
	c := newClient(endpoints)
	defer c.Close()
	const perTxn, workers = 100, 8
	value := strconv.Itoa(points)
	next := int64(0)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				from := int(atomic.AddInt64(&next, perTxn)) - perTxn
				if from >= members {
					return
				}
				var ops []clientv3.Op
				for id := from; id < from+perTxn && id < members; id++ {
					ops = append(ops, clientv3.OpPut(memberKey(id), value))
				}
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				_, err := c.Txn(ctx).Then(ops...).Commit()
				cancel()
				if err != nil {
					die("load members %d..: %v", from, err)
				}
			}
		}()
	}
	wg.Wait()
	// Check the count: a load that silently missed keys would change the op.
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	got, err := c.Get(ctx, "m/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || got.Count != int64(members) {
		die("after loading, %d member keys (want %d): %v", got.Count, members, err)
	}
}

type counters struct{ ops, rejected, retries, errors int64 }

// oneOp runs one op to its end: done (committed or rejected) or an error.
func oneOp(c *clientv3.Client, rng *mrand.Rand, members int, n *counters) error {
	id := rng.Intn(members)
	points := int64(1 + rng.Intn(1000))
	if rng.Intn(10) >= 7 {
		points = -points // a redemption
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return err
	}
	mkey, lkey := memberKey(id), "l/"+hex.EncodeToString(raw[:])
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			atomic.AddInt64(&n.retries, 1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		got, err := c.Get(ctx, mkey)
		if err != nil {
			cancel()
			return err
		}
		if len(got.Kvs) != 1 {
			cancel()
			return fmt.Errorf("%s: missing", mkey)
		}
		kv := got.Kvs[0]
		balance, err := strconv.ParseInt(string(kv.Value), 10, 64)
		if err != nil {
			cancel()
			return fmt.Errorf("%s: %v", mkey, err)
		}
		if balance+points < 0 {
			cancel()
			atomic.AddInt64(&n.rejected, 1)
			return nil // rejected: nothing written
		}
		after := balance + points
		row := fmt.Sprintf(`{"member":%d,"delta":%d,"balance":%d,"at":%d}`,
			id, points, after, time.Now().UnixNano())
		txn, err := c.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(mkey), "=", kv.ModRevision),
				clientv3.Compare(clientv3.CreateRevision(lkey), "=", 0)).
			Then(clientv3.OpPut(mkey, strconv.FormatInt(after, 10)), clientv3.OpPut(lkey, row)).
			Else(clientv3.OpGet(lkey, clientv3.WithCountOnly())).
			Commit()
		cancel()
		if err != nil {
			return err
		}
		if txn.Succeeded {
			return nil
		}
		// The row exists: this op committed after all.
		if rs := txn.Responses[0].GetResponseRange(); rs != nil && rs.Count > 0 {
			return nil
		}
	}
}

// percentile is the p-th percentile of sorted µs samples in ms, by the rank tally-bench
// and report.py use (the sample at p % of the count, the last one for 100).
func percentile(sorted []uint32, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i]) / 1e3
}

// writeCSV writes the distribution as tally-bench --latency-csv does:
// percentile,latency_ms for every percent, then 99.5, 99.9, 99.99 and the maximum.
func writeCSV(path string, sorted []uint32) {
	var b strings.Builder
	b.WriteString("percentile,latency_ms\n")
	for p := 0; p < 100; p++ {
		fmt.Fprintf(&b, "%d,%.3f\n", p, percentile(sorted, float64(p)))
	}
	for _, p := range []float64{99.5, 99.9, 99.99, 100} {
		fmt.Fprintf(&b, "%g,%.3f\n", p, percentile(sorted, p))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		die("%v", err)
	}
}

func run(endpoints []string, inflight, secs, members int, csv string) {
	lead := leader(endpoints)
	fmt.Fprintf(os.Stderr, "etcdload: leader %s; %d in flight for %d s\n", lead, inflight, secs)
	clients := make([]*clientv3.Client, inflight)
	for i := range clients {
		clients[i] = newClient([]string{lead})
	}
	var n counters
	var stop int32
	lat := make([][]uint32, inflight)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < inflight; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rng := mrand.New(mrand.NewSource(time.Now().UnixNano() + int64(i)*7919))
			for atomic.LoadInt32(&stop) == 0 {
				t := time.Now()
				if err := oneOp(clients[i], rng, members, &n); err != nil {
					if atomic.AddInt64(&n.errors, 1) <= 5 {
						fmt.Fprintf(os.Stderr, "etcdload: %v\n", err)
					}
					continue
				}
				us := time.Since(t).Microseconds()
				if us > math.MaxUint32 {
					us = math.MaxUint32
				}
				lat[i] = append(lat[i], uint32(us))
				atomic.AddInt64(&n.ops, 1)
			}
		}(i)
	}
	// A progress line per second on stderr, as tally-bench prints.
	last := int64(0)
	for s := 1; s <= secs; s++ {
		time.Sleep(time.Until(start.Add(time.Duration(s) * time.Second)))
		now := atomic.LoadInt64(&n.ops)
		fmt.Fprintf(os.Stderr, "  %3ds  %8d ops/s  (%d total, %d errors)\n", s, now-last, now,
			atomic.LoadInt64(&n.errors))
		last = now
	}
	atomic.StoreInt32(&stop, 1)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	for _, c := range clients {
		c.Close()
	}

	var all []uint32
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	if csv != "" {
		writeCSV(csv, all)
	}
	res := result{
		System: "etcd", Inflight: inflight, Seconds: elapsed, Ops: n.ops,
		OpsPerS: float64(n.ops) / elapsed, Rejected: n.rejected, Retries: n.retries,
		Errors: n.errors, Leader: lead,
		LatencyMs: map[string]float64{
			"p50": percentile(all, 50), "p99": percentile(all, 99),
			"p999": percentile(all, 99.9), "max": percentile(all, 100),
		},
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "client endpoints, comma-separated")
	doLoad := flag.Bool("load", false, "load the members and exit")
	members := flag.Int("members", 100000, "number of members")
	points := flag.Int("points", 10000, "starting balance of every member (-load)")
	inflight := flag.Int("inflight", 1, "ops in flight (goroutines, one client each)")
	secs := flag.Int("secs", 20, "seconds to run")
	csv := flag.String("latency-csv", "", "write the op latency distribution here")
	flag.Parse()
	eps := strings.Split(*endpoints, ",")
	if *members < 1 || *inflight < 1 || *secs < 1 {
		die("-members, -inflight and -secs must be >= 1")
	}
	if *doLoad {
		load(eps, *members, *points)
		return
	}
	run(eps, *inflight, *secs, *members, *csv)
}
