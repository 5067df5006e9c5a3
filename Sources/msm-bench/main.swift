// msm-bench: the agent's user-space figures beside the design targets, in one run.
//
//   swift run -c release msm-bench
//
// 1. ingest: ring-buffer records (as the kernel writes them) decoded and aggregated on one
//    core — target ≥ 1 M events/s;
// 2. /metrics: snapshot + render with 10 000 series — target ≤ 20 ms.
// The kernel side is measured by scripts/bench-overhead.sh (cost per probed call).
import Foundation
import MSMCore

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

let config = try ConfigParser.parse(yaml: """
    - symbol: svc:step
      metrics:
        - {name: step:duration, type: timer}
        - {name: batch_size, type: histogram, expr: len(ret)}
        - {name: tokens, type: counter, expr: n, labels: [{name: phase, expr: p}]}
    - symbol: svc:many
      metrics:
        - {name: many, type: gauge, expr: x, labels: [{name: key, expr: k}]}
    """, file: "bench.yaml")

// ---- 1. ingest
let processes: [Int32] = Array(1000..<1008)
var setup: [ProviderEvent] = []
for pid in processes {
    for (id, metric, labels) in [(0, "step:duration", [:]), (1, "batch_size", [:]),
                                 (2, "tokens", ["phase": "decode"])] as [(UInt32, String, [String: String])] {
        let labelText = labels.map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",")
        setup.append(EventDecoder.decode(EventEncoder.json(pid: pid, #"{"type":"series","id":\#(id),"metric":"\#(metric)","labels":{\#(labelText)}}"#)))
    }
}
let records: [[UInt8]] = (0..<4096).map { index in
    EventEncoder.sample(pid: processes[index % processes.count], tid: 1, ktimeNs: 2_000_000 + UInt64(index), probeId: 0,
                        startNs: 1_000_000, values: [SampleValue(seriesId: 0, op: SampleOp.observeDuration, value: 0),
                                                     SampleValue(seriesId: 1, op: SampleOp.observe, value: Double(index % 64)),
                                                     SampleValue(seriesId: 2, op: SampleOp.inc, value: 1)])
}
let ingestAggregator = Aggregator()
await ingestAggregator.configure(config)
await ingestAggregator.ingest(setup)
let total = 2_000_000
let clock = ContinuousClock()
let ingestTime = await clock.measure {
    var done = 0
    var batch: [ProviderEvent] = []
    batch.reserveCapacity(records.count)
    while done < total {
        batch.removeAll(keepingCapacity: true)
        for record in records {
            record.withUnsafeBytes { batch.append(EventDecoder.decode($0)) }
        }
        await ingestAggregator.ingest(batch)
        done += records.count
    }
}
let rate = Double(total) / seconds(ingestTime)

// ---- 2. render 10 000 series
let renderAggregator = Aggregator(seriesLimitPerMetric: 20_000)
await renderAggregator.configure(config)
var many: [ProviderEvent] = []
for index in 0..<10_000 {
    many.append(EventDecoder.decode(EventEncoder.json(pid: 7, #"{"type":"series","id":\#(index),"metric":"many","labels":{"key":"k\#(index)"}}"#)))
    many.append(EventDecoder.decode(EventEncoder.sample(pid: 7, tid: 7, ktimeNs: 10, probeId: 1, startNs: 5,
                                                        values: [SampleValue(seriesId: UInt32(index), op: SampleOp.set, value: Double(index))])))
}
await renderAggregator.ingest(many)
var best = Duration.seconds(100)
var bytes = 0
for _ in 0..<10 {
    let elapsed = await clock.measure {
        let text = PrometheusRenderer.render(await renderAggregator.snapshot())
        bytes = text.utf8.count
    }
    best = min(best, elapsed)
}

print("""
    | what | measured | target |
    |---|---|---|
    | agent ingest, one core (decode + aggregate, 3 values/event) | \(String(format: "%.2f", rate / 1e6)) M events/s | ≥ 1 M events/s |
    | /metrics with 10 000 series (snapshot + render, best of 10) | \(String(format: "%.1f", seconds(best) * 1000)) ms (\(bytes / 1024) KiB) | ≤ 20 ms |
    """)
