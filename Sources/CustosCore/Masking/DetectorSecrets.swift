/// The secret scanners: credentials are masked whole, or by value where the key is worth keeping.
extension SpanScanner {
    /// Whether a secret could start at `i`: the pre-scan's test, shared so the two never disagree.
    static func secretMarker(_ b: UnsafeRawBufferPointer, at i: Int) -> Bool {
        switch b[i] {
        case 0x41: matches(b, "AKIA", at: i) || matches(b, "ASIA", at: i) || matches(b, "api", at: i, anyCase: true)
        case 0x61: matches(b, "api", at: i, anyCase: true)
        case 0x65: matches(b, "eyJ", at: i)
        case 0x2D: matches(b, "-----BEGIN", at: i)
        case 0x42, 0x62: matches(b, "bearer", at: i, anyCase: true)
        case 0x50, 0x70: matches(b, "passw", at: i, anyCase: true) || matches(b, "pwd", at: i, anyCase: true)
        case 0x53, 0x73: matches(b, "secret", at: i, anyCase: true)
        case 0x54, 0x74: matches(b, "token", at: i, anyCase: true)
        default: false
        }
    }

    /// AWS access key ids, JWTs, PEM private keys, bearer tokens (the token only, so the
    /// scheme stays readable) and `key=value` / `key: value` credentials (the value only).
    mutating func secrets() {
        var i = 0
        while i < n {
            var span: Range<Int>?
            switch b[i] {
            case 0x41: span = awsKey(at: i) ?? keyValue(at: i)
            case 0x65: span = jwt(at: i)
            case 0x2D: span = pem(at: i)
            case 0x42, 0x62: span = bearer(at: i)
            case 0x50, 0x70, 0x53, 0x73, 0x54, 0x74, 0x61: span = keyValue(at: i)
            default: break
            }
            if let span {
                add(span, .secret)
                i = max(span.upperBound, i + 1)
            } else {
                i += 1
            }
        }
    }

    private func awsKey(at i: Int) -> Range<Int>? {
        guard matches("AKIA", at: i) || matches("ASIA", at: i), i + 20 <= n, !MaskByte.isAlnum(at(i - 1)), !MaskByte.isAlnum(at(i + 20))
        else { return nil }
        for k in (i + 4)..<(i + 20) where !(MaskByte.isDigit(b[k]) || (0x41...0x5A).contains(b[k])) { return nil }
        return i..<(i + 20)
    }

    private static func isBase64URL(_ c: UInt8) -> Bool { MaskByte.isAlnum(c) || c == 0x2D || c == 0x5F }

    private func jwt(at i: Int) -> Range<Int>? {
        guard matches("eyJ", at: i), !Self.isBase64URL(at(i - 1)) else { return nil }
        var j = i
        for part in 0..<3 {
            if part > 0 {
                guard at(j) == 0x2E else { return nil }
                j += 1
            }
            let start = j
            while j < n, Self.isBase64URL(b[j]) { j += 1 }
            guard j - start >= 10 else { return nil }
        }
        return i..<j
    }

    /// Index of `literal` in `from..<to`, if any.
    private func find(_ literal: StaticString, from: Int, to: Int) -> Int? {
        var k = from
        while k + literal.utf8CodeUnitCount <= min(to, n) {
            if matches(literal, at: k) { return k }
            k += 1
        }
        return nil
    }

    /// The end of a PEM `-----BEGIN/END <label>-----` line at `i` whose label names a private
    /// key (the line's closing dashes), or nil.
    private func privateKeyLine(at i: Int, marker: Int) -> Int? {
        var lineEnd = i + marker
        while lineEnd < n, lineEnd - i < 100, b[lineEnd] != 0x0A { lineEnd += 1 }
        guard let close = find("-----", from: i + marker, to: lineEnd), find("PRIVATE KEY", from: i + marker, to: close) != nil
        else { return nil }
        return close + 5
    }

    private func pem(at i: Int) -> Range<Int>? {
        guard matches("-----BEGIN ", at: i), let header = privateKeyLine(at: i, marker: 11) else { return nil }
        var k = header
        while let end = find("-----END ", from: k, to: n) {
            if let close = privateKeyLine(at: end, marker: 9) { return i..<close }
            k = end + 9
        }
        // No END: everything after the header may be key material.
        return i..<n
    }

    private func bearer(at i: Int) -> Range<Int>? {
        guard matches("bearer", at: i, anyCase: true), !MaskByte.isLetter(at(i - 1)), at(i + 6) == 0x20 || at(i + 6) == 0x09
        else { return nil }
        var j = i + 6
        while at(j) == 0x20 || at(j) == 0x09 { j += 1 }
        let start = j
        while j < n, Self.isTokenCharacter(b[j]) { j += 1 }
        return j - start >= 16 ? start..<j : nil
    }

    private static func isTokenCharacter(_ c: UInt8) -> Bool {
        // [A-Za-z0-9._~+/=-]
        MaskByte.isAlnum(c) || c == 0x2E || c == 0x5F || c == 0x7E || c == 0x2B || c == 0x2F || c == 0x3D || c == 0x2D
    }

    /// Credential keys and the shortest value counted: any password; generic names like `token`
    /// only with 8+ characters, so prose such as "token: yes" stays.
    private static let credentialKeys: [(key: StaticString, minimum: Int)] = [
        ("password", 1), ("passwd", 1), ("pwd", 1), ("secret", 8), ("token", 8), ("api_key", 8), ("apikey", 8), ("api-key", 8),
    ]

    /// `$n` or `?`, alone or before the `,` / `)` that ends it in SQL.
    private func isBindParameter(_ start: Int, _ end: Int) -> Bool {
        var k = start + 1
        if b[start] == 0x24 {
            while k < end, MaskByte.isDigit(b[k]) { k += 1 }
            guard k > start + 1 else { return false }
        } else if b[start] != 0x3F {
            return false
        }
        for rest in k..<end where b[rest] != 0x2C && b[rest] != 0x29 { return false }
        return true
    }

    private func keyValue(at i: Int) -> Range<Int>? {
        guard !MaskByte.isAlnum(at(i - 1)) else { return nil }
        func isQuote(_ c: UInt8) -> Bool { c == 0x22 || c == 0x27 }
        for (key, minimum) in Self.credentialKeys where matches(key, at: i, anyCase: true) {
            var j = i + key.utf8CodeUnitCount
            if isQuote(at(j)) { j += 1 }  // "password": "…"
            while at(j) == 0x20 { j += 1 }
            guard at(j) == 0x3D || at(j) == 0x3A else { return nil }  // = :
            j += 1
            while at(j) == 0x20 { j += 1 }
            let quote = isQuote(at(j)) ? b[j] : nil
            if quote != nil { j += 1 }
            let start = j
            if let quote {
                // A quoted value runs to its closing quote, past SQL's doubled quote and JSON's backslash.
                while j < n, b[j] != 0x0A {
                    if b[j] == 0x5C, quote == 0x22 { j += 2; continue }
                    if b[j] == quote { if at(j + 1) == quote { j += 2; continue }; break }
                    j += 1
                }
                j = min(j, n)
            } else {
                // Unquoted, it ends at whitespace, ';', a quote or '&' (connection strings, query strings).
                while j < n, !MaskByte.isSpace(b[j]), b[j] != 0x3B, !isQuote(b[j]), b[j] != 0x26 { j += 1 }
            }
            // A bind parameter (`SET password = $1`, `?`) is no secret, and masking it would
            // break recorded SQL.
            if quote == nil, isBindParameter(start, j) { return nil }
            return j - start >= minimum ? start..<j : nil
        }
        return nil
    }
}
