/// Run-time settings the gateway holds, whoever asks to change them and however (a startup
/// parameter, `options`, `SET`, `set_config`): those that change how the backend reads SQL, which
/// every decision rests on, and those that change whom the session acts as.
public enum GuardedSettings {
    /// Settings that change how PostgreSQL lexes what the client sends. The analysis reads SQL as
    /// UTF-8 with standard-conforming strings, as libpg_query does; with `\'` escaping a quote, or
    /// bytes converted from another encoding, a string could end where the analysis sees it go on.
    public static let lexing: Set<String> = ["standard_conforming_strings", "client_encoding"]

    /// Settings that change whom the session acts as: only `SET` under the policy may change them.
    public static let privileged: Set<String> = ["role", "session_authorization", "session_replication_role"]

    /// Whether `value` leaves `setting` where the analysis reads SQL as PostgreSQL does: for
    /// `standard_conforming_strings`, true in PostgreSQL's boolean spellings; for
    /// `client_encoding`, an encoding PostgreSQL does not convert from (UTF8, or SQL_ASCII, whose
    /// bytes it checks as the database's own). Any value of any other setting is safe.
    public static func isSafe(_ setting: String, value: String) -> Bool {
        let value = value.lowercased()
        switch setting.lowercased() {
        case "standard_conforming_strings":
            // parse_bool: on, 1, and any prefix of true or yes.
            return value == "on" || value == "1" || (!value.isEmpty && ("true".hasPrefix(value) || "yes".hasPrefix(value)))
        case "client_encoding":
            // PostgreSQL compares encoding names without case or punctuation (UTF-8 is UTF8).
            let name = String(value.filter { $0.isASCII && ($0.isLetter || $0.isNumber) })
            return ["utf8", "unicode", "sqlascii"].contains(name)
        default:
            return true
        }
    }

    /// Why the client may not send this startup parameter, or nil when it may. `options` may carry
    /// settings only (`-c name=value`, `--name=value`), each checked as a parameter of its own.
    public static func refusal(startupParameter name: String, value: String) -> String? {
        if name == "options" {
            guard let settings = optionSettings(value) else {
                return "startup option switches other than -c name=value are not allowed through Custos"
            }
            return settings.lazy.compactMap { refusal(startupParameter: $0.name, value: $0.value) }.first
        }
        let setting = name.lowercased()
        if privileged.contains(setting) {
            return "the startup parameter \(setting) is not allowed through Custos: use SET under the policy"
        }
        if lexing.contains(setting), !isSafe(setting, value: value) {
            return "Custos reads SQL with standard_conforming_strings on and client_encoding UTF8: \(setting) = \(value) is not supported"
        }
        return nil
    }

    /// The settings in a startup `options` string, split as PostgreSQL splits it (blanks separate
    /// words; a backslash keeps the next character), with `-` in names read as `_`; nil when it
    /// holds anything but settings.
    static func optionSettings(_ options: String) -> [(name: String, value: String)]? {
        var words: [String] = []
        var word = String.UnicodeScalarView()
        var escaped = false
        var inWord = false
        // Scalars, not Characters: "\r\n", or a blank before a combining mark, is one Character
        // but two separate things to PostgreSQL's isspace().
        for scalar in options.unicodeScalars {
            if escaped {
                word.append(scalar)
                escaped = false
            } else if scalar == "\\" {
                escaped = true
                inWord = true
            } else if [" ", "\t", "\n", "\r", "\u{0B}", "\u{0C}"].contains(scalar) {
                if inWord { words.append(String(word)) }
                word = String.UnicodeScalarView()
                inWord = false
            } else {
                word.append(scalar)
                inWord = true
            }
        }
        if inWord { words.append(String(word)) }
        var settings: [(name: String, value: String)] = []
        var index = 0
        while index < words.count {
            let current = words[index]
            let assignment: Substring
            if current == "-c" {
                index += 1
                guard index < words.count else { return nil }
                assignment = Substring(words[index])
            } else if current.hasPrefix("-c") {
                assignment = current.dropFirst(2)
            } else if current.hasPrefix("--") {
                assignment = current.dropFirst(2)
            } else {
                return nil
            }
            guard let equals = assignment.firstIndex(of: "="), equals > assignment.startIndex else { return nil }
            let name = assignment[..<equals].replacingOccurrences(of: "-", with: "_")
            settings.append((name, String(assignment[assignment.index(after: equals)...])))
            index += 1
        }
        return settings
    }
}
