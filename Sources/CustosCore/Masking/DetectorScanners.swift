/// The byte scanners behind ``Detectors``; each appends what it finds, overlaps are resolved after.
struct SpanScanner {
    let b: UnsafeRawBufferPointer
    var found: [DetectedSpan] = []

    init(bytes: UnsafeRawBufferPointer) { self.b = bytes }

    var n: Int { b.count }

    /// The byte at `i`, or 0 outside the buffer: 0 is no digit, letter or separator, so
    /// boundary checks need no range tests.
    @inline(__always) func at(_ i: Int) -> UInt8 { i >= 0 && i < b.count ? b[i] : 0 }

    mutating func add(_ range: Range<Int>, _ detector: Detector) {
        found.append(DetectedSpan(range: range, detector: detector))
    }

    /// Whether `literal` (lowercase when `anyCase`) is at `i`.
    static func matches(_ b: UnsafeRawBufferPointer, _ literal: StaticString, at i: Int, anyCase: Bool = false) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard i >= 0, i + count <= b.count else { return false }
        let p = literal.utf8Start
        for k in 0..<count where (anyCase ? MaskByte.lower(b[i + k]) : b[i + k]) != p[k] { return false }
        return true
    }

    func matches(_ literal: StaticString, at i: Int, anyCase: Bool = false) -> Bool {
        Self.matches(b, literal, at: i, anyCase: anyCase)
    }

    func digits(_ i: Int, _ count: Int) -> Bool {
        for k in i..<(i + count) where !MaskByte.isDigit(at(k)) { return false }
        return true
    }

    private func number(_ i: Int, _ count: Int) -> Int {
        var value = 0
        for k in i..<(i + count) { value = value * 10 + Int(b[k] &- 0x30) }
        return value
    }

    // MARK: email

    /// local@domain.tld: local [A-Za-z0-9._%+-]+, dot-separated labels [A-Za-z0-9-]+, a TLD of 2+ letters.
    mutating func emails() {
        for i in 0..<n where b[i] == 0x40 {
            if let span = email(at: i) { add(span, .email) }
        }
    }

    private func email(at a: Int) -> Range<Int>? {
        func isLocal(_ c: UInt8) -> Bool {
            MaskByte.isAlnum(c) || c == 0x2E || c == 0x5F || c == 0x25 || c == 0x2B || c == 0x2D  // . _ % + -
        }
        var start = a
        while start > 0, isLocal(b[start - 1]) { start -= 1 }
        // A '*' before the local part means a partially masked address: never detect it again.
        guard at(start - 1) != MaskByte.star else { return nil }
        while start < a, b[start] == 0x2E { start += 1 }
        guard start < a else { return nil }
        var end = a + 1
        while end < n, MaskByte.isAlnum(b[end]) || b[end] == 0x2E || b[end] == 0x2D { end += 1 }
        while end > a + 1, b[end - 1] == 0x2E || b[end - 1] == 0x2D { end -= 1 }
        var label = a + 1
        var dots = 0
        for k in (a + 1)..<end where b[k] == 0x2E {
            guard k > label else { return nil }
            dots += 1
            label = k + 1
        }
        guard dots > 0, end - label >= 2 else { return nil }
        for k in label..<end where !MaskByte.isLetter(b[k]) { return nil }
        return start..<end
    }

    // MARK: card

    /// 13–19 digits starting 2–6 (the payment-card industries; this keeps 13-digit millisecond
    /// timestamps out), in groups split by single spaces or dashes, passing Luhn. A card inside a
    /// longer group sequence ("4111 1111 1111 1111 12/25") is found on group boundaries; a card
    /// inside an unbroken longer digit run never is.
    mutating func cards() {
        var groups: [Range<Int>] = []
        var i = 0
        while i < n {
            guard MaskByte.isDigit(b[i]) else {
                i += 1
                continue
            }
            groups.removeAll(keepingCapacity: true)
            var j = i
            while true {
                let start = j
                while j < n, MaskByte.isDigit(b[j]) { j += 1 }
                groups.append(start..<j)
                guard b.count > j + 1, b[j] == 0x20 || b[j] == 0x2D, MaskByte.isDigit(b[j + 1]) else { break }
                j += 1
            }
            cardWindows(groups)
            i = j
        }
    }

    /// The longest Luhn-valid window of whole groups starting at group `s`: (last group, digits).
    private func longestCard(_ groups: [Range<Int>], from s: Int) -> (end: Int, digits: Int)? {
        guard (0x32...0x36).contains(b[groups[s].lowerBound]) else { return nil }
        var best: (end: Int, digits: Int)?
        var digits = 0
        for e in s..<groups.count {
            digits += groups[e].count
            if digits > 19 { break }
            if digits >= 13, Detectors.luhnValid(b[groups[s].lowerBound..<groups[e].upperBound]) { best = (e, digits) }
        }
        return best
    }

    private mutating func cardWindows(_ groups: [Range<Int>]) {
        var s = 0
        while s < groups.count {
            guard let first = longestCard(groups, from: s) else {
                s += 1
                continue
            }
            // A longer card starting inside this one wins: "5 4111 1111 1111 1111" is the 16-digit card.
            var best = (start: s, end: first.end, digits: first.digits)
            if first.end > s {
                for t in (s + 1)...first.end {
                    if let other = longestCard(groups, from: t), other.digits > best.digits { best = (t, other.end, other.digits) }
                }
            }
            add(groups[best.start].lowerBound..<groups[best.end].upperBound, .card)
            s = best.end + 1
        }
    }

    // MARK: ssn

    /// AAA-GG-SSSS (or with spaces): area not 000/666/9xx, group not 00, serial not 0000,
    /// not continuing a longer run in the same format. Bare 9 digits are too often something else.
    mutating func ssns() {
        var i = 0
        while i + 11 <= n {
            if MaskByte.isDigit(b[i]), ssn(at: i) {
                add(i..<(i + 11), .ssn)
                i += 11
            } else {
                i += 1
            }
        }
    }

    private func ssn(at i: Int) -> Bool {
        let separator = b[i + 3]
        guard separator == 0x2D || separator == 0x20, b[i + 6] == separator,
            digits(i, 3), digits(i + 4, 2), digits(i + 7, 4),
            !MaskByte.isDigit(at(i - 1)), !MaskByte.isDigit(at(i + 11)),
            !(at(i - 1) == separator && MaskByte.isDigit(at(i - 2))),
            !(at(i + 11) == separator && MaskByte.isDigit(at(i + 12)))
        else { return false }
        let area = number(i, 3)
        return area != 0 && area != 666 && area < 900 && number(i + 4, 2) != 0 && number(i + 7, 4) != 0
    }

    // MARK: phone

    /// `+` and 8–15 digits (separators: space - . ( ), at most two in a row), or North American
    /// `(NNN) NNN-NNNN`, `NNN-NNN-NNNN`, `NNN.NNN.NNNN`, not inside a longer digit run.
    mutating func phones() {
        var i = 0
        while i < n {
            let c = b[i]
            if c == 0x2B, let end = international(at: i) {
                add(i..<end, .phone)
                i = end
            } else if c == 0x28 || MaskByte.isDigit(c), let end = northAmerican(at: i) {
                add(i..<end, .phone)
                i = end
            } else {
                i += 1
            }
        }
    }

    private static func isPhoneSeparator(_ c: UInt8) -> Bool {
        c == 0x20 || c == 0x2D || c == 0x2E || c == 0x28 || c == 0x29
    }

    private func international(at i: Int) -> Int? {
        guard !MaskByte.isAlnum(at(i - 1)), MaskByte.isDigit(at(i + 1)) else { return nil }
        var j = i + 1
        var count = 0
        var end = j
        while j < n {
            if MaskByte.isDigit(b[j]) {
                count += 1
                j += 1
                end = j
                continue
            }
            var k = j
            while k < n, k - j <= 2, Self.isPhoneSeparator(b[k]) { k += 1 }
            guard k - j <= 2, MaskByte.isDigit(at(k)) else { break }
            j = k
        }
        return (8...15).contains(count) ? end : nil
    }

    private func northAmerican(at i: Int) -> Int? {
        guard !MaskByte.isDigit(at(i - 1)) else { return nil }
        let end: Int
        if b[i] == 0x28 {
            guard digits(i + 1, 3), at(i + 4) == 0x29 else { return nil }
            let j = at(i + 5) == 0x20 ? i + 6 : i + 5
            guard digits(j, 3), at(j + 3) == 0x2D || at(j + 3) == 0x2E, digits(j + 4, 4) else { return nil }
            end = j + 8
        } else {
            let separator = at(i + 3)
            guard separator == 0x2D || separator == 0x2E, digits(i, 3), digits(i + 4, 3), at(i + 7) == separator,
                digits(i + 8, 4), !(at(i - 1) == separator && MaskByte.isDigit(at(i - 2)))
            else { return nil }
            end = i + 12
        }
        let next = at(end)
        guard !MaskByte.isDigit(next), !((next == 0x2D || next == 0x2E) && MaskByte.isDigit(at(end + 1))) else { return nil }
        return end
    }

    // MARK: iban

    /// Two letters, two digits, 11–30 alphanumerics, plain or in groups of four split by single
    /// spaces, passing mod-97, on word boundaries. With groups, the longest valid prefix wins,
    /// so a following word is never taken for the last group.
    mutating func ibans() {
        var i = 0
        while i + 15 <= n {
            if MaskByte.isLetter(b[i]), let end = iban(at: i) {
                add(i..<end, .iban)
                i = end
            } else {
                i += 1
            }
        }
    }

    private func iban(at i: Int) -> Int? {
        guard !MaskByte.isAlnum(at(i - 1)), MaskByte.isLetter(at(i + 1)), MaskByte.isDigit(at(i + 2)), MaskByte.isDigit(at(i + 3))
        else { return nil }
        var j = i
        while j < n, MaskByte.isAlnum(b[j]) { j += 1 }
        let run = j - i
        if run >= 15 { return run <= 34 && Detectors.ibanValid(b[i..<j]) ? j : nil }
        guard run == 4 else { return nil }
        var best: Int?
        var count = 4
        while at(j) == 0x20 {
            var k = j + 1
            while k < n, MaskByte.isAlnum(b[k]) { k += 1 }
            let group = k - j - 1
            guard (1...4).contains(group), count + group <= 34 else { break }
            count += group
            if count >= 15, Detectors.ibanValid(b[i..<k]) { best = k }
            j = k
            if group < 4 { break }
        }
        return best
    }
}
