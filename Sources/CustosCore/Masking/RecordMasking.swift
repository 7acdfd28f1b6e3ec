/// Masks a statement before it is recorded: literals and parameters compared with or assigned to a
/// masked column, passwords, and anything a detector finds anywhere in the text (comments
/// included). The recorded text stays valid SQL; a statement that lost a literal is marked, since
/// replaying it cannot re-run it exactly.
public struct RecordMasking: Sendable {
    /// Statement kinds whose literals may be passwords (the parser says which).
    public static let passwordKinds: Set<String> = [
        "create_role", "alter_role", "create_user_mapping", "alter_user_mapping", "create_foreign_server", "alter_foreign_server",
    ]

    public let masker: Masker

    public init(masker: Masker) {
        self.masker = masker
    }

    /// Whether the statements need the parser's literal uses: they touch a table with masked
    /// columns, or may carry a password.
    public static func needsLiteralUses(_ statements: [StatementInfo], profile: MaskingProfile) -> Bool {
        statements.contains { statement in
            passwordKinds.contains(statement.kind)
                || (!profile.isEmpty && (statement.tablesRead + statement.tablesWritten).contains(where: profile.masksColumns(of:)))
        }
    }

    /// The recorded form of a statement's text and parameters, and whether anything was masked.
    public func mask(text: String, parameters: [String?], uses: [LiteralUse], profile: MaskingProfile) -> (text: String, parameters: [String?], masked: Bool) {
        var masked = false
        var parameters = parameters
        var result = text
        // Replace from the end so earlier ranges stay valid.
        let ranged = uses.compactMap { use in use.range.map { ($0, use.role) } }.sorted { $0.0.lowerBound > $1.0.lowerBound }
        if !ranged.isEmpty {
            var bytes = Array(text.utf8)
            var lastStart = Int.max
            for (range, role) in ranged where range.upperBound <= bytes.count && range.upperBound <= lastStart && !range.isEmpty {
                guard let strategy = strategy(for: role, profile: profile) else { continue }
                let literal = String(decoding: bytes[range], as: UTF8.self)
                bytes.replaceSubrange(range, with: Array(Self.quoted(maskLiteral(literal, strategy: strategy)).utf8))
                lastStart = range.lowerBound
                masked = true
            }
            if masked { result = String(decoding: bytes, as: UTF8.self) }
        }
        for use in uses {
            guard let number = use.parameter, number >= 1, number <= parameters.count, let strategy = strategy(for: use.role, profile: profile),
                let value = parameters[number - 1]
            else { continue }
            parameters[number - 1] = masker.mask(value, strategy: strategy)
            masked = true
        }
        // Secrets never reach the record, whoever sent them.
        var detectors = profile.detectors
        if detectors[.secret] == nil { detectors[.secret] = .redact }
        let (detected, changed) = masker.maskDetected(result, strategies: detectors)
        if changed {
            result = detected ?? "[redacted]"
            masked = true
        }
        for index in parameters.indices {
            guard let value = parameters[index] else { continue }
            let (detectedValue, changedValue) = masker.maskDetected(value, strategies: detectors)
            if changedValue {
                parameters[index] = detectedValue
                masked = true
            }
        }
        return (result, parameters, masked)
    }

    private func strategy(for role: LiteralUse.Role, profile: MaskingProfile) -> MaskingStrategy? {
        switch role {
        case .password: .redact
        case .column(let table, let column): profile.strategy(forReference: column, table: table)
        // Fails closed: where any column is masked for this identity, such a literal may be one of them.
        case .unknown: profile.columns.isEmpty && profile.columnNames.isEmpty ? nil : .redact
        }
    }

    /// The masked value of a literal token: its content (quotes removed) masked by `strategy`.
    private func maskLiteral(_ token: String, strategy: MaskingStrategy) -> String {
        var content = Substring(token)
        if let quote = content.firstIndex(of: "'"), content.last == "'", quote < content.index(before: content.endIndex) {
            content = content[content.index(after: quote)..<content.index(before: content.endIndex)]
        } else if content.hasPrefix("$"), let end = content.dropFirst().firstIndex(of: "$") {
            let tag = content[...end]
            if content.hasSuffix(tag), content.count >= 2 * tag.count { content = content.dropFirst(tag.count).dropLast(tag.count) }
        }
        return masker.mask(String(content), strategy: strategy) ?? "[redacted]"
    }

    private static func quoted(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: "''") + "'"
    }
}
