import Foundation

/// The role of a process in a vLLM deployment and its data-parallel rank, from its title.
/// vLLM names its processes with setproctitle: "VLLM::EngineCore_DP1", "VLLM::Worker",
/// "VLLM::APIServer_0", "VLLM::DPCoordinator". The rules are a table, in order; the first
/// match wins. A worker has no rank of its own in its title: it takes its engine core's.
public struct ProcessRole: Sendable, Equatable {
    public let role: String
    /// DP rank; -1 for front-end (API server) and unrelated processes.
    public let dp: Int
    /// True when the rank comes from the parent process (workers).
    public let inheritsRank: Bool

    struct Rule {
        /// Compiled once: classify runs on every scan of attached targets.
        let regex: NSRegularExpression
        let role: String
        let dp: Int?  // nil: from the first capture group
        let inheritsRank: Bool

        init(pattern: String, role: String, dp: Int?, inheritsRank: Bool) {
            // The patterns are literals below; the unit tests compile every one.
            regex = try! NSRegularExpression(pattern: pattern)
            self.role = role
            self.dp = dp
            self.inheritsRank = inheritsRank
        }
    }

    static let rules: [Rule] = [
        Rule(pattern: #"VLLM::EngineCore_DP(\d+)"#, role: "engine_core", dp: nil, inheritsRank: false),
        Rule(pattern: #"VLLM::EngineCore"#, role: "engine_core", dp: 0, inheritsRank: false),
        Rule(pattern: #"VLLM::Worker"#, role: "worker", dp: 0, inheritsRank: true),
        Rule(pattern: #"VLLM::DPCoordinator"#, role: "dp_coordinator", dp: -1, inheritsRank: false),
        Rule(pattern: #"VLLM::APIServer"#, role: "api_server", dp: -1, inheritsRank: false),
    ]

    /// Python's own helper processes that run no application code: never targets (the
    /// resource tracker waits in read() forever, so it could not be injected anyway).
    static let helperMarkers = [
        "from multiprocessing.resource_tracker import main",
        "from multiprocessing.forkserver import main",
        "from multiprocessing.semaphore_tracker import main",
    ]

    public static func isPythonHelper(title: String) -> Bool {
        helperMarkers.contains { title.contains($0) }
    }

    public static func classify(title: String) -> ProcessRole {
        for rule in rules {
            guard let match = rule.regex.firstMatch(in: title, range: NSRange(title.startIndex..., in: title)) else { continue }
            var dp = rule.dp ?? -1
            if rule.dp == nil, match.numberOfRanges > 1, let range = Range(match.range(at: 1), in: title) {
                dp = Int(title[range]) ?? -1
            }
            return ProcessRole(role: rule.role, dp: dp, inheritsRank: rule.inheritsRank)
        }
        return ProcessRole(role: "main", dp: -1, inheritsRank: false)
    }
}
