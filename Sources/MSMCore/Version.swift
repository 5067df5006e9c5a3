public enum MSMCoreVersion { public static let version = "0.1.0" }
