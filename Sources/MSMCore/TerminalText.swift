/// Text the agent prints that may carry what a target chose (process titles, probe details,
/// messages from providers): control characters are shown escaped, so that a title with an
/// escape sequence cannot rewrite the operator's terminal (move the cursor, hide lines, set
/// the window title) or reorder text (bidirectional overrides).
public enum TerminalText {
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if needsEscape(scalar) {
                out += scalar.value <= 0xff ? "\\x" + hex(scalar.value, 2) : "\\u{" + hex(scalar.value, 4) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// C0 controls (tab included), DEL, C1 controls, and the bidirectional embedding,
    /// override and isolate characters.
    static func needsEscape(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        return v < 0x20 || (0x7f...0x9f).contains(v) || (0x202a...0x202e).contains(v) || (0x2066...0x2069).contains(v)
            || v == 0x200e || v == 0x200f || v == 0x061c
    }

    private static func hex(_ value: UInt32, _ width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}
