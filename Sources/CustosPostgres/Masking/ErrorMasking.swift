import CustosCore

/// Masks the fields of ErrorResponse and NoticeResponse that can echo data: PostgreSQL puts the
/// offending values in the detail of constraint violations ("Key (email)=(…) already exists",
/// "Failing row contains (…)"), and any field may quote a value.
enum ErrorMasking {
    /// Fields that never hold data: severity (both forms), SQLSTATE, positions, source location.
    private static let structural: Set<UInt8> = Set("SVCPpFLR".utf8)

    /// The masked fields, or nil when nothing changed.
    static func mask(_ error: ErrorFields, profile: MaskingProfile, masker: Masker) -> ErrorFields? {
        guard !profile.isEmpty else { return nil }
        var changed = false
        var fields = error.fields
        let echoesMasked = profile.hasColumnRules || !profile.columnNames.isEmpty
        for index in fields.indices where !structural.contains(fields[index].code) {
            var value = fields[index].value
            if echoesMasked, fields[index].code == UInt8(ascii: "D"), let redacted = redactEcho(value) {
                value = redacted
                changed = true
            }
            if !profile.detectors.isEmpty {
                let (masked, detected) = masker.maskDetected(value, strategies: profile.detectors)
                if detected {
                    value = masked ?? "[redacted]"
                    changed = true
                }
            }
            fields[index].value = value
        }
        return changed ? ErrorFields(fields) : nil
    }

    /// "Key (a, b)=(x, y) already exists." and "Failing row contains (…)." with the values redacted.
    static func redactEcho(_ detail: String) -> String? {
        if detail.hasPrefix("Key ("), let open = detail.range(of: ")=("), let close = detail.range(of: ")", options: .backwards), close.lowerBound > open.upperBound {
            return String(detail[..<open.upperBound]) + "[redacted]" + String(detail[close.lowerBound...])
        }
        if let open = detail.range(of: "Failing row contains ("), let close = detail.range(of: ")", options: .backwards), close.lowerBound >= open.upperBound {
            return String(detail[..<open.upperBound]) + "[redacted]" + String(detail[close.lowerBound...])
        }
        return nil
    }
}
