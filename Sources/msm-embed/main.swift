// msm-embed: run by the EmbedArtifacts build plugin.
//
// 1. clang -target bpf: bpf/msm.bpf.c -> msm.bpf.o (the collector), bpf/msm_inject.bpf.c ->
//    msm_inject.bpf.o (the safe point and return point of a live injection)
// 2. clang -shared: provider/native/msm_probe.c -> _msm_probe.abi3.so (stable-ABI CPython
//    extension that is also the marker library the uprobes attach to)
// 3. writes a Swift file that carries both objects and the provider's Python sources as
//    base64, plus a content hash used to name the install directory.
import Foundation

struct Failure: Error, CustomStringConvertible { let description: String }

func option(_ name: String) -> String? {
    let args = CommandLine.arguments
    guard let index = args.firstIndex(of: name), index + 1 < args.count else { return nil }
    return args[index + 1]
}

func run(_ executable: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.standardError
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw Failure(description: "\(executable) \(arguments.joined(separator: " ")) failed with status \(process.terminationStatus)")
    }
    return String(decoding: data, as: UTF8.self)
}

func which(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// Include flags for Python.h: pkg-config first (python3-dev), else the interpreter itself.
func pythonIncludeFlags() throws -> [String] {
    if let pkgConfig = which("pkg-config"),
       let flags = try? run(pkgConfig, ["--cflags", "python3"]),
       !flags.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
        return flags.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    }
    if let python = which("python3") {
        let include = try run(python, ["-c", "import sysconfig; print(sysconfig.get_paths()['include'])"])
        return ["-I" + include.trimmingCharacters(in: .whitespacesAndNewlines)]
    }
    throw Failure(description: "Python.h not found: install python3-dev (apt-get install python3-dev)")
}

func bpfArch() -> String {
    var info = utsname()
    uname(&info)
    let machine = withUnsafeBytes(of: &info.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    switch machine {
    case "aarch64": return "arm64"
    default: return "x86"
    }
}

func multiarchInclude() -> String {
    var info = utsname()
    uname(&info)
    let machine = withUnsafeBytes(of: &info.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    return "/usr/include/\(machine)-linux-gnu"
}

func main() throws {
    guard let packageDir = option("--package-dir"), let workDir = option("--work-dir"),
          let output = option("--output") else {
        throw Failure(description: "usage: msm-embed --package-dir DIR --work-dir DIR --output FILE [--clang PATH]")
    }
    guard let clang = option("--clang") ?? which("clang") else {
        throw Failure(description: "clang not found (the Swift toolchain ships one)")
    }
    try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
    let bpfDir = "\(packageDir)/bpf"
    func compileBPF(_ name: String) throws -> String {
        let object = "\(workDir)/\(name).bpf.o"
        _ = try run(clang, [
            "-target", "bpf", "-D__TARGET_ARCH_\(bpfArch())", "-O2", "-g", "-Wall", "-Werror",
            "-I", bpfDir, "-I", multiarchInclude(),
            "-c", "\(bpfDir)/\(name).bpf.c", "-o", object,
        ])
        return object
    }
    let bpfObject = try compileBPF("msm")
    let injectObject = try compileBPF("msm_inject")
    let nativeLibrary = "\(workDir)/_msm_probe.abi3.so"
    _ = try run(clang, [
        "-shared", "-fPIC", "-O2", "-g", "-Wall", "-Werror", "-fvisibility=hidden",
        "-fuse-ld=bfd", "-DPy_LIMITED_API=0x030a0000", "-I", bpfDir,
    ] + (try pythonIncludeFlags()) + [
        "\(packageDir)/provider/native/msm_probe.c", "-o", nativeLibrary,
    ])

    // Files installed for targets, relative to the provider directory.
    var files: [(String, Data)] = [("_msm_probe.abi3.so", try Data(contentsOf: URL(fileURLWithPath: nativeLibrary)))]
    let providerRoot = "\(packageDir)/provider"
    for sub in ["msm_provider", "boot"] {
        let dir = "\(providerRoot)/\(sub)"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        for name in names.sorted() where name.hasSuffix(".py") {
            files.append(("\(sub)/\(name)", try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)"))))
        }
    }
    let bpfData = try Data(contentsOf: URL(fileURLWithPath: bpfObject))
    let injectData = try Data(contentsOf: URL(fileURLWithPath: injectObject))
    let defaultConfig = (try? Data(contentsOf: URL(fileURLWithPath: "\(packageDir)/Config/default.yaml"))) ?? Data()

    // FNV-1a over names and contents: names the install directory so that a new build never
    // overwrites a library a running target has mapped.
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for (name, data) in files {
        for byte in Array(name.utf8) + [0] + Array(data) {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
    }

    var swift = "// Generated by msm-embed. Do not edit.\n"
    swift += "public enum EmbeddedArtifacts {\n"
    swift += "    public static let contentHash = \"\(String(hash, radix: 16))\"\n"
    swift += "    public static let defaultConfigBase64 = \"\(defaultConfig.base64EncodedString())\"\n"
    swift += "    public static let bpfObjectBase64 = \"\(bpfData.base64EncodedString())\"\n"
    swift += "    public static let injectBPFObjectBase64 = \"\(injectData.base64EncodedString())\"\n"
    swift += "    public static let providerFilesBase64: [(path: String, base64: String)] = [\n"
    for (name, data) in files {
        swift += "        (\"\(name)\", \"\(data.base64EncodedString())\"),\n"
    }
    swift += "    ]\n}\n"
    try swift.write(toFile: output, atomically: true, encoding: .utf8)
}

do {
    try main()
} catch {
    FileHandle.standardError.write("msm-embed: \(error)\n".data(using: .utf8)!)
    exit(1)
}
