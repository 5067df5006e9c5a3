// msm-fuzz: mutation fuzzer of the parsers that read what a target or a user wrote.
//
//   swift run msm-fuzz [--seconds S] [--seed N] [--only config|events|elf|maps]
//
// Targets: the symbol config (YAML → SymbolConfig, then the reference-handler mapping), ring
// records (EventDecoder, and the aggregator they feed), ELF files (the C reader behind
// ELFSymbolTable), /proc/PID/maps text (the C parser). Seeds are real inputs (the built-in
// config, the test fixtures, encoded records, the embedded provider library, this
// executable's maps); mutations flip, insert, delete, duplicate and splice bytes, and
// replace numbers by boundary values. Any throw is a normal rejection; a crash (a Swift trap,
// a fault) writes the input to /tmp/msm-fuzz-crash-<target> and exits non-zero. Prints one
// line per target and a summary: `msm-fuzz: N inputs, 0 crashes (S s)`.
import CFuzzShim
import CInjector
import CMSMABI
import Foundation
import MSMAgent
import MSMArtifacts
import MSMCore

struct Rng {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
}

/// One mutation of `input`, sometimes spliced with another seed.
func mutate(_ input: [UInt8], seeds: [[UInt8]], rng: inout Rng, interesting: [[UInt8]]) -> [UInt8] {
    var b = input
    for _ in 0..<(1 + rng.below(4)) {
        switch rng.below(9) {
        case 0 where !b.isEmpty:  // flip a bit
            let i = rng.below(b.count)
            b[i] ^= UInt8(1 << rng.below(8))
        case 1 where !b.isEmpty:  // random byte
            b[rng.below(b.count)] = UInt8(truncatingIfNeeded: rng.next())
        case 2 where !b.isEmpty:  // delete a run
            let i = rng.below(b.count)
            b.removeSubrange(i..<min(b.count, i + 1 + rng.below(16)))
        case 3:  // insert an interesting token
            let token = interesting[rng.below(interesting.count)]
            b.insert(contentsOf: token, at: rng.below(b.count + 1))
        case 4 where !b.isEmpty:  // duplicate a run
            let i = rng.below(b.count)
            let run = Array(b[i..<min(b.count, i + 1 + rng.below(64))])
            b.insert(contentsOf: run, at: rng.below(b.count + 1))
        case 5 where b.count >= 8:  // boundary value in a little-endian word
            let i = rng.below(b.count - 7)
            let values: [UInt64] = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff,
                                    0x7fff_ffff_ffff_ffff, 0x8000_0000_0000_0000, UInt64.max]
            var v = values[rng.below(values.count)]
            let width = [1, 2, 4, 8][rng.below(4)]
            for k in 0..<width { b[i + k] = UInt8(truncatingIfNeeded: v); v >>= 8 }
        case 6 where !b.isEmpty:  // truncate
            b.removeSubrange(rng.below(b.count)...)
        case 7:  // splice with another seed
            let other = seeds[rng.below(seeds.count)]
            if !other.isEmpty, !b.isEmpty {
                let cut = rng.below(b.count)
                b = Array(b[..<cut]) + Array(other[rng.below(other.count)...])
            }
        default:
            break
        }
    }
    return b
}

struct Target {
    let name: String
    let seeds: [[UInt8]]
    let interesting: [[UInt8]]
    let run: ([UInt8]) -> Void
}

func fileBytes(_ path: String) -> [UInt8]? { FileManager.default.contents(atPath: path).map { [UInt8]($0) } }

func configTarget(repo: String) -> Target {
    var seeds = [Array(Artifacts.defaultConfig.utf8)]
    for dir in ["\(repo)/Tests/fixtures", "\(repo)/../shared/reference/reference-configs",
                "\(repo)/../shared/reference/reference-configs/docs-examples",
                "\(repo)/../shared/reference/reference-configs/legacy-patcher",
                "\(repo)/../shared/reference/reference-configs/sglang"] {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasSuffix(".yaml") {
            if let b = fileBytes("\(dir)/\(name)") { seeds.append(b) }
        }
    }
    let tokens = ["\n- symbol: a:b\n", "\n  metrics:\n", "    - name: x\n      type: histogram\n",
                  "buckets: [1, .inf, -1, 1e309]\n", "expr: len(ret)\n", "labels: [{name: dp}]\n", "&a ", "*a ",
                  "!!python/object:os.system ", "{", "}", "[", "]", "\"", "'", ":", "- ", "\t", "\u{0}", "min_version: \"0.1rc1+x\"\n",
                  "handler: ms_service_metric.handlers.scheduler:schedule_handler\n", "<<: *a\n", "%YAML 1.1\n---\n"]
    let builtIns = try! ConfigParser.parse(yaml: Artifacts.defaultConfig, file: "default.yaml")
    return Target(name: "config", seeds: seeds, interesting: tokens.map { Array($0.utf8) }) { input in
        guard let text = String(validating: input, as: UTF8.self) else { return }
        if let config = try? ConfigParser.parse(yaml: text, file: "fuzz.yaml") {
            _ = ReferenceHandlerMapping.apply(to: config, builtIns: builtIns)
            _ = try? ControlFile(config: config, generation: 1, enabled: true, agentPid: 1).jsonData()
        }
    }
}

func record(pid: UInt32, payload: [UInt8]) -> [UInt8] {
    var r = [UInt8]()
    func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { r.append(contentsOf: $0) } }
    le(UInt64(1_000_000)); le(pid); le(pid); le(UInt32(payload.count)); le(UInt32(0))
    return r + payload
}

func eventsTarget() -> Target {
    func json(_ s: String) -> [UInt8] {
        var p = [UInt8]()
        withUnsafeBytes(of: UInt16(2).littleEndian) { p.append(contentsOf: $0) }
        p += [0, 0, 0, 0, 0, 0]
        return record(pid: 7, payload: p + Array(s.utf8))
    }
    func sample(values: Int) -> [UInt8] {
        var p = [UInt8]()
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { p.append(contentsOf: $0) } }
        le(UInt16(1)); le(UInt16(values)); le(UInt32(0)); le(UInt32(0)); le(UInt32(0)); le(UInt64(500))
        for k in 0..<values { le(UInt32(k)); le(UInt32(1 + k % 4)); le(Double(k).bitPattern) }
        return record(pid: 7, payload: p)
    }
    let seeds = [sample(values: 1), sample(values: 5), sample(values: 0),
                 json(#"{"type":"series","id":0,"metric":"calls","labels":{"phase":"decode"}}"#),
                 json(#"{"type":"hello","pid":7,"python":"3.11.7","argv":["a"],"title":"t","vllm_version":null}"#),
                 json(#"{"type":"probe","probe":0,"state":"active","detail":""}"#),
                 json(#"{"type":"expr_error","probe":0,"metric":"calls","count":3,"message":"boom"}"#),
                 json(#"{"type":"ack","generation":4,"enabled":true,"instrumented":2}"#),
                 json(#"{"type":"bye","reason":"disabled"}"#)]
    let tokens = [#""id":4294967295"#, #""count":-1"#, #"1e999"#, #"null"#, #"[]"#, #"{}"#, #"\u0000"#, #"\ud800"#,
                  #""generation":18446744073709551616"#, #""probe":-9223372036854775808"#].map { Array($0.utf8) }
    let config = try! ConfigParser.parse(yaml: """
        - symbol: svc:work
          metrics:
            - {name: calls, type: counter, labels: [{name: phase, expr: p}]}
            - {name: size, type: histogram, expr: s}
        """, file: "f.yaml")
    let aggregator = Aggregator()
    let ready = DispatchSemaphore(value: 0)
    Task { await aggregator.configure(config); ready.signal() }
    ready.wait()
    return Target(name: "events", seeds: seeds, interesting: tokens) { input in
        let event = EventDecoder.decode(input)
        let done = DispatchSemaphore(value: 0)
        Task {
            await aggregator.ingest([event])
            done.signal()
        }
        done.wait()
    }
}

func elfTarget() -> Target {
    var seeds: [[UInt8]] = []
    if let library = Artifacts.providerFiles.first(where: { $0.path.hasSuffix(".so") }) { seeds.append([UInt8](library.data)) }
    for path in ["/usr/bin/true", "/usr/bin/env"] { if let b = fileBytes(path) { seeds.append(b) } }
    let names = [MSM_MARKER_SYMBOL, MSM_SEMAPHORE_SYMBOL, MSM_ARM_SYMBOL, "main", "_start"]
    return Target(name: "elf", seeds: seeds, interesting: [[0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], [0xff, 0xff, 0xff, 0xff]]) { input in
        _ = try? ELFSymbolTable(path: "fuzz.so", bytes: input, names: names)
    }
}

/// ELF inputs are large: mutations aim at the headers (start) and the section table (end).
func elfMutate(_ input: [UInt8], rng: inout Rng) -> [UInt8] {
    var b = input
    for _ in 0..<(1 + rng.below(8)) where !b.isEmpty {
        let region = rng.below(3)
        let i = region == 0 ? rng.below(min(b.count, 256)) : region == 1 ? max(0, b.count - 1 - rng.below(min(b.count, 4096))) : rng.below(b.count)
        if rng.below(2) == 0 {
            b[i] = UInt8(truncatingIfNeeded: rng.next())
        } else if i + 8 <= b.count {
            var v = [UInt64.max, 0, 0x8000_0000_0000_0000, UInt64(b.count), UInt64(b.count) + 1][rng.below(5)]
            for k in 0..<8 { b[i + k] = UInt8(truncatingIfNeeded: v); v >>= 8 }
        }
    }
    if rng.below(10) == 0 { b.removeSubrange(rng.below(b.count)...) }
    return b
}

func mapsTarget() -> Target {
    let own = fileBytes("/proc/self/maps") ?? []
    let seeds = [own, Array("7f0000000000-7f0000100000 r-xp 00000000 08:01 99 /x/_msm_probe.abi3.so (deleted)\n".utf8)]
    let tokens = ["ffffffffffffffff", "-", " ", "\n", "00:00", "\u{0}", "rwxp", "18446744073709551616"].map { Array($0.utf8) }
    return Target(name: "maps", seeds: seeds, interesting: tokens) { input in
        var maps = msm_maps()
        input.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { _ = msm_maps_parse($0.baseAddress, $0.count, 0, 1 << 16, &maps) }
        }
        msm_maps_free(&maps)
    }
}

func option(_ name: String) -> String? {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}

let seconds = Double(option("--seconds") ?? "10") ?? 10
let seed = UInt64(option("--seed") ?? "") ?? UInt64(Date().timeIntervalSince1970 * 1000)
let repo = option("--repo") ?? FileManager.default.currentDirectoryPath
let only = option("--only")
var targets = [configTarget(repo: repo), eventsTarget(), elfTarget(), mapsTarget()]
if let only { targets = targets.filter { $0.name == only } }
print("msm-fuzz: seed \(seed), \(Int(seconds)) s per target")
let start = Date()
var total = 0
for target in targets {
    msm_fuzz_install("/tmp/msm-fuzz-crash-\(target.name)")
    var rng = Rng(state: seed ^ UInt64(target.name.hashValue & 0xffff))
    var count = 0
    let deadline = Date().addingTimeInterval(seconds)
    var corpus = target.seeds
    while Date() < deadline {
        for _ in 0..<64 {
            let base = corpus[rng.below(corpus.count)]
            let input = target.name == "elf" ? elfMutate(base, rng: &rng)
                : mutate(base, seeds: corpus, rng: &rng, interesting: target.interesting)
            input.withUnsafeBytes { msm_fuzz_current($0.baseAddress, $0.count) }
            target.run(input)
            count += 1
            // Keep a few mutants as new starting points (cheap diversity, no coverage feedback).
            if rng.below(64) == 0, corpus.count < 256, input.count < 1 << 20 { corpus.append(input) }
        }
    }
    msm_fuzz_current(nil, 0)
    total += count
    print("msm-fuzz: \(target.name): \(count) inputs, 0 crashes")
}
print(String(format: "msm-fuzz: %d inputs, 0 crashes (%.1f s)", total, Date().timeIntervalSince(start)))
