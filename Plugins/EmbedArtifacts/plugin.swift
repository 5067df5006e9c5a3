// Build-tool plugin: compiles the kernel side (bpf/*.bpf.c) and the provider's native
// marker library with the toolchain's clang, and embeds them together with the provider's
// Python sources into the agent as a generated Swift file. The user never has to know
// where these artifacts live: the agent carries them.
import Foundation
import PackagePlugin

@main
struct EmbedArtifacts: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let inputs = ["bpf", "provider"].flatMap { sourceFiles(under: root.appendingPathComponent($0)) }
            + [root.appendingPathComponent("Config/default.yaml")]
        let output = context.pluginWorkDirectoryURL.appendingPathComponent("EmbeddedArtifacts.swift")
        let work = context.pluginWorkDirectoryURL.appendingPathComponent("artifacts")
        var arguments = [
            "--package-dir", root.path,
            "--work-dir", work.path,
            "--output", output.path,
        ]
        if let clang = try? context.tool(named: "clang") {
            arguments += ["--clang", clang.url.path]
        }
        return [
            .buildCommand(
                displayName: "Building BPF object and probe provider",
                executable: try context.tool(named: "msm-embed").url,
                arguments: arguments,
                inputFiles: inputs,
                outputFiles: [output]
            ),
        ]
    }

    private func sourceFiles(under directory: URL) -> [URL] {
        guard let walker = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil) else {
            return []
        }
        return walker.compactMap { $0 as? URL }.filter { url in
            ["c", "h", "py"].contains(url.pathExtension)
        }
    }
}
