import Foundation

/// The artifacts the agent carries: the BPF object and the provider's files.
public enum Artifacts {
    public static var bpfObject: Data {
        Data(base64Encoded: EmbeddedArtifacts.bpfObjectBase64) ?? Data()
    }

    /// bpf/msm_inject.bpf.o: the safe point and return point of a live injection.
    public static let injectBPFObject: Data = Data(base64Encoded: EmbeddedArtifacts.injectBPFObjectBase64) ?? Data()

    /// Config/default.yaml: the built-in symbol config.
    public static var defaultConfig: String {
        String(decoding: Data(base64Encoded: EmbeddedArtifacts.defaultConfigBase64) ?? Data(), as: UTF8.self)
    }

    /// Files of the provider directory, relative path → contents. Decoded once, on first use.
    public static let providerFiles: [(path: String, data: Data)] =
        EmbeddedArtifacts.providerFilesBase64.map { ($0.path, Data(base64Encoded: $0.base64) ?? Data()) }

    /// Content hash of the provider files; names their install directory.
    public static var providerHash: String { EmbeddedArtifacts.contentHash }
}
