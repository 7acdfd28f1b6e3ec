/// A small PostgreSQL token scanner over UTF-8 bytes, for what the parse tree does not say: where
/// a literal token ends (libpg_query gives only its start), where a password string follows its
/// keyword, and where `COPY (query)`'s parentheses are.
///
/// It follows PostgreSQL's scan.l with `standard_conforming_strings` on (libpg_query's setting, so
/// the token boundaries agree with the tree the parser built): `'…'` with `''` doubling, `E'…'`
/// with backslash escapes, `U&'…'` (and its `UESCAPE '…'`), `B'…'`, `X'…'`, `N'…'`, `$tag$…$tag$`,
/// quoted identifiers, `--` and nested `/* */` comments. Every scan is bounded by the input: an
/// unterminated token runs to the end (a range too large is safe where a range too small is not).
struct SQLLexer {
    enum Kind: Equatable {
        case string, number, identifier, quotedIdentifier, parameter, punctuation, end
    }

    struct Token: Equatable {
        var kind: Kind
        var range: Range<Int>
    }

    let bytes: [UInt8]

    init(_ sql: String) {
        bytes = Array(sql.utf8)
    }

    private var count: Int { bytes.count }

    @inline(__always) private func byte(_ index: Int) -> UInt8 {
        index < count ? bytes[index] : 0
    }

    @inline(__always) static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || (byte >= 0x09 && byte <= 0x0D)
    }

    /// scan.l's ident_start: letters, `_` and any non-ASCII byte.
    @inline(__always) static func isIdentifierStart(_ byte: UInt8) -> Bool {
        (byte | 0x20) >= UInt8(ascii: "a") && (byte | 0x20) <= UInt8(ascii: "z") || byte == UInt8(ascii: "_") || byte >= 0x80
    }

    @inline(__always) static func isIdentifierContinuation(_ byte: UInt8) -> Bool {
        isIdentifierStart(byte) || isDigit(byte) || byte == UInt8(ascii: "$")
    }

    @inline(__always) static func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    // MARK: Tokens

    /// The position of the first byte at or after `index` that is neither whitespace nor comment.
    func skipTrivia(_ index: Int) -> Int {
        var position = max(index, 0)
        while position < count {
            let current = bytes[position]
            if Self.isSpace(current) {
                position += 1
            } else if current == UInt8(ascii: "-"), byte(position + 1) == UInt8(ascii: "-") {
                while position < count, bytes[position] != 0x0A { position += 1 }
            } else if current == UInt8(ascii: "/"), byte(position + 1) == UInt8(ascii: "*") {
                position = blockCommentEnd(position)
            } else {
                break
            }
        }
        return position
    }

    /// Block comments nest in PostgreSQL.
    private func blockCommentEnd(_ start: Int) -> Int {
        var depth = 0
        var position = start
        while position < count {
            if bytes[position] == UInt8(ascii: "/"), byte(position + 1) == UInt8(ascii: "*") {
                depth += 1
                position += 2
            } else if bytes[position] == UInt8(ascii: "*"), byte(position + 1) == UInt8(ascii: "/") {
                depth -= 1
                position += 2
                if depth == 0 { return position }
            } else {
                position += 1
            }
        }
        return count
    }

    /// The token starting at the first non-trivia byte at or after `index`.
    func token(at index: Int) -> Token {
        let start = skipTrivia(index)
        guard start < count else { return Token(kind: .end, range: count..<count) }
        let first = bytes[start]
        let second = byte(start + 1)
        let lower = first | 0x20
        // A multi-pattern `case` applies its `where` to the last pattern only: hence the ifs.
        if first == UInt8(ascii: "'") {
            return Token(kind: .string, range: start..<quotedEnd(start, backslashes: false))
        }
        if first == UInt8(ascii: "\"") {
            return Token(kind: .quotedIdentifier, range: start..<quotedEnd(start, backslashes: false, continues: false))
        }
        if second == UInt8(ascii: "'") {
            if lower == UInt8(ascii: "e") { return Token(kind: .string, range: start..<quotedEnd(start + 1, backslashes: true)) }
            if lower == UInt8(ascii: "b") || lower == UInt8(ascii: "x") || lower == UInt8(ascii: "n") {
                return Token(kind: .string, range: start..<quotedEnd(start + 1, backslashes: false))
            }
        }
        if lower == UInt8(ascii: "u"), second == UInt8(ascii: "&") {
            if byte(start + 2) == UInt8(ascii: "'") {
                return Token(kind: .string, range: start..<unicodeEscapeEnd(quotedEnd(start + 2, backslashes: false)))
            }
            if byte(start + 2) == UInt8(ascii: "\"") {
                let end = quotedEnd(start + 2, backslashes: false, continues: false)
                return Token(kind: .quotedIdentifier, range: start..<unicodeEscapeEnd(end))
            }
        }
        if first == UInt8(ascii: "$") {
            if Self.isDigit(second) {
                var end = start + 1
                while end < count, Self.isDigit(bytes[end]) { end += 1 }
                return Token(kind: .parameter, range: start..<end)
            }
            if let end = dollarQuoteEnd(start) { return Token(kind: .string, range: start..<end) }
            return Token(kind: .punctuation, range: start..<start + 1)
        }
        if Self.isDigit(first) || first == UInt8(ascii: ".") && Self.isDigit(second) {
            return Token(kind: .number, range: start..<numberEnd(start))
        }
        if Self.isIdentifierStart(first) { return Token(kind: .identifier, range: start..<identifierEnd(start)) }
        return Token(kind: .punctuation, range: start..<start + 1)
    }

    private func identifierEnd(_ start: Int) -> Int {
        var end = start + 1
        while end < count, Self.isIdentifierContinuation(bytes[end]) { end += 1 }
        return end
    }

    /// Digits, a fraction, an exponent; also hex/octal/binary prefixes and `_` separators
    /// (PostgreSQL 16): anything alphanumeric glued to a number is part of it (PostgreSQL 15
    /// rejects trailing junk, so this never swallows a following word).
    private func numberEnd(_ start: Int) -> Int {
        var end = start
        while end < count {
            let current = bytes[end]
            if Self.isDigit(current) || Self.isIdentifierStart(current) && current < 0x80 || current == UInt8(ascii: ".") {
                end += 1
            } else if current == UInt8(ascii: "+") || current == UInt8(ascii: "-"), end > start,
                bytes[end - 1] | 0x20 == UInt8(ascii: "e"), Self.isDigit(byte(end + 1))
            {
                end += 1
            } else {
                break
            }
        }
        return end
    }

    /// The end of a quoted token whose opening quote is at `open`: the quote character doubled
    /// is an escape; with `backslashes`, so is a backslash and the byte after it. With
    /// `continues`, a string followed by whitespace holding a newline and another quote goes on
    /// (`'a'` newline `'b'` is one literal, `ab`).
    private func quotedEnd(_ open: Int, backslashes: Bool, continues: Bool = true) -> Int {
        let quote = bytes[open]
        var position = open + 1
        while true {
            while position < count {
                let current = bytes[position]
                if backslashes && current == UInt8(ascii: "\\") {
                    position += 2
                } else if current == quote {
                    if byte(position + 1) == quote {
                        position += 2
                    } else {
                        break
                    }
                } else {
                    position += 1
                }
            }
            guard position < count else { return count }
            position += 1  // the closing quote
            guard continues, let next = continuation(position) else { return position }
            position = next + 1
        }
    }

    /// If whitespace with a newline and then a quote follow `end`, the quote's position.
    private func continuation(_ end: Int) -> Int? {
        var position = end
        var newline = false
        while position < count, Self.isSpace(bytes[position]) {
            if bytes[position] == 0x0A || bytes[position] == 0x0D { newline = true }
            position += 1
        }
        return newline && byte(position) == UInt8(ascii: "'") ? position : nil
    }

    /// After a `U&'…'` string or `U&"…"` identifier: an optional `UESCAPE '…'` belongs to it.
    private func unicodeEscapeEnd(_ end: Int) -> Int {
        let next = token(at: end)
        guard next.kind == .identifier, next.range.count == 7, text(next.range).lowercased() == "uescape" else { return end }
        let escape = token(at: next.range.upperBound)
        return escape.kind == .string ? escape.range.upperBound : end
    }

    /// A `$tag$…$tag$` string starting at `start`, or nil when `start` does not open one.
    private func dollarQuoteEnd(_ start: Int) -> Int? {
        var tagEnd = start + 1
        if tagEnd < count, Self.isIdentifierStart(bytes[tagEnd]) {
            while tagEnd < count, Self.isIdentifierContinuation(bytes[tagEnd]) && bytes[tagEnd] != UInt8(ascii: "$") { tagEnd += 1 }
        }
        guard byte(tagEnd) == UInt8(ascii: "$") else { return nil }
        let tag = bytes[start...tagEnd]
        var position = tagEnd + 1
        while position < count {
            if bytes[position] == UInt8(ascii: "$"), position + tag.count <= count, bytes[position..<position + tag.count].elementsEqual(tag) {
                return position + tag.count
            }
            position += 1
        }
        return count
    }

    func text(_ range: Range<Int>) -> String {
        let clamped = range.clamped(to: 0..<count)
        return String(decoding: bytes[clamped], as: UTF8.self)
    }

    // MARK: Literals

    /// The byte range of the constant the parser placed at `location` (an `A_Const`'s start).
    ///
    /// A negated number (`-5`, `- (3)`) is located at its minus sign: the range then runs from
    /// the sign over any parentheses to the number and its closing parentheses. A keyword constant
    /// (`TRUE`) covers the keyword. Nil when `location` is outside the text.
    func literalRange(at location: Int) -> Range<Int>? {
        guard location >= 0, location < count else { return nil }
        let first = bytes[location]
        guard first == UInt8(ascii: "-") || first == UInt8(ascii: "+") else {
            let literal = token(at: location)
            return literal.kind == .end ? nil : location..<max(literal.range.upperBound, location + 1)
        }
        var position = location
        var parentheses = 0
        while true {
            position = skipTrivia(position)
            guard position < count else { return location..<count }
            let current = bytes[position]
            if current == UInt8(ascii: "(") {
                parentheses += 1
            } else if current != UInt8(ascii: "-") && current != UInt8(ascii: "+") {
                break
            }
            position += 1
        }
        var end = token(at: position).range.upperBound
        while parentheses > 0 {
            let close = token(at: end)
            guard close.kind == .punctuation, bytes[close.range.lowerBound] == UInt8(ascii: ")") else { break }
            end = close.range.upperBound
            parentheses -= 1
        }
        return location..<max(end, location + 1)
    }

    /// The first string literal token at or after `index` and before `limit`: where a password
    /// follows its keyword (`PASSWORD 'x'`, `ENCRYPTED PASSWORD 'x'`, `SET password 'x'`).
    func nextString(from index: Int, before limit: Int) -> Range<Int>? {
        var position = index
        while position < min(limit, count) {
            let next = token(at: position)
            if next.kind == .end { return nil }
            if next.kind == .string { return next.range }
            position = next.range.upperBound
        }
        return nil
    }

    /// The first string after the keyword `keyword` (lowercase) at or after `index`, before `limit`.
    func string(afterKeyword keyword: String, from index: Int, before limit: Int) -> Range<Int>? {
        var position = index
        while position < min(limit, count) {
            let next = token(at: position)
            if next.kind == .end { return nil }
            if next.kind == .identifier, next.range.count == keyword.utf8.count, text(next.range).lowercased() == keyword {
                return nextString(from: next.range.upperBound, before: limit)
            }
            position = next.range.upperBound
        }
        return nil
    }
}
