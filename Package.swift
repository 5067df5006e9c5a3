// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ms-service-metric",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "ms-service-metric", targets: ["ms-service-metric"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        // The kernel/user boundary (bpf/msm_abi.h) as a C module for Swift.
        .target(name: "CMSMABI", path: "Sources/CMSMABI"),
        // libbpf from the system (libbpf-dev), through pkg-config.
        .systemLibrary(name: "CLibbpf", path: "Sources/CLibbpf", pkgConfig: "libbpf",
                       providers: [.apt(["libbpf-dev", "libelf-dev"])]),
        // Small C helpers around libbpf that Swift cannot express (option structs, callbacks).
        .target(name: "CBPFShim", dependencies: ["CLibbpf", "CMSMABI"], path: "Sources/CBPFShim"),
        // POSIX calls Swift's Glibc module does not expose (SO_PEERCRED needs _GNU_SOURCE).
        .target(name: "CPosixShim", path: "Sources/CPosixShim"),
        // ptrace injection of Python source into a running CPython 3.10-3.13 (x86-64), with its
        // safe point as per-process uprobes (libbpf); the one ELF and /proc/PID/maps reader.
        .target(name: "CInjector", dependencies: ["CLibbpf"], path: "Sources/CInjector"),

        // Builds bpf/*.bpf.c and the provider's native library with the toolchain's clang and
        // embeds them, with the provider's Python sources, into the agent binary.
        .executableTarget(name: "msm-embed", path: "Sources/msm-embed"),
        .plugin(name: "EmbedArtifacts", capability: .buildTool(), dependencies: ["msm-embed"],
                path: "Plugins/EmbedArtifacts"),
        .target(name: "MSMArtifacts", path: "Sources/MSMArtifacts", plugins: ["EmbedArtifacts"]),

        // Pure logic: config, aggregation, exposition. No I/O beyond reading a config file.
        .target(name: "MSMCore", dependencies: ["Yams", "CMSMABI"], path: "Sources/MSMCore"),
        // The agent: BPF loading and attach, target discovery, control socket, HTTP.
        .target(name: "MSMAgent", dependencies: [
            "MSMCore", "MSMArtifacts", "CBPFShim", "CLibbpf", "CMSMABI", "CPosixShim", "CInjector",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], path: "Sources/MSMAgent"),
        // Wiring only: command-line parsing and dispatch.
        .executableTarget(name: "ms-service-metric", dependencies: [
            "MSMAgent", "MSMCore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], path: "Sources/ms-service-metric"),

        // Mutation fuzzer of the parsers that read what targets and users write (config, ring
        // records, ELF files, maps): `swift run msm-fuzz --seconds S` (scripts/fuzz.sh).
        .target(name: "CFuzzShim", path: "Sources/CFuzzShim"),
        .executableTarget(name: "msm-fuzz", dependencies: ["MSMCore", "MSMAgent", "MSMArtifacts", "CInjector", "CMSMABI", "CFuzzShim"],
                          path: "Sources/msm-fuzz"),

        // Benchmarks of the user-space path (ingest, rendering): `swift run -c release msm-bench`.
        .executableTarget(name: "msm-bench", dependencies: ["MSMCore"], path: "Sources/msm-bench"),

        .testTarget(name: "MSMCoreTests", dependencies: ["MSMCore"], path: "Tests/MSMCoreTests"),
        // The pure parts of the PEP 768 path (offsets parsing, request planning).
        .testTarget(name: "CInjectorTests", dependencies: ["CInjector"], path: "Tests/CInjectorTests"),
        // Agent logic that needs no BPF: /proc parsing and caching, the injection schedule.
        .testTarget(name: "MSMAgentTests", dependencies: ["MSMAgent"], path: "Tests/MSMAgentTests"),
    ]
)
