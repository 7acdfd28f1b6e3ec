import Testing

@testable import CustosCore

@Suite("GuardedSettings")
struct GuardedSettingsTests {
    @Test("standard_conforming_strings is safe only when true, in PostgreSQL's spellings")
    func standardStrings() {
        for value in ["on", "ON", "true", "t", "tr", "yes", "y", "1"] {
            #expect(GuardedSettings.isSafe("standard_conforming_strings", value: value), Comment(rawValue: value))
        }
        for value in ["off", "false", "f", "no", "0", "o", "", "2", "onn"] {
            #expect(!GuardedSettings.isSafe("Standard_Conforming_Strings", value: value), Comment(rawValue: value))
        }
    }

    @Test("client_encoding is safe only where PostgreSQL does not convert")
    func encodings() {
        for value in ["UTF8", "utf-8", "Unicode", "SQL_ASCII", "sql-ascii"] {
            #expect(GuardedSettings.isSafe("client_encoding", value: value), Comment(rawValue: value))
        }
        for value in ["LATIN1", "SJIS", "BIG5", "GBK", "WIN1252", "auto", ""] {
            #expect(!GuardedSettings.isSafe("client_encoding", value: value), Comment(rawValue: value))
        }
        #expect(GuardedSettings.isSafe("search_path", value: "anything"))
    }

    @Test("options are split as PostgreSQL splits them, and hold settings only")
    func options() throws {
        let settings = try #require(GuardedSettings.optionSettings("-c search_path=a\\ b  --statement-timeout=5s -cwork_mem=64MB"))
        #expect(settings.map(\.name) == ["search_path", "statement_timeout", "work_mem"])
        #expect(settings.map(\.value) == ["a b", "5s", "64MB"])
        #expect(GuardedSettings.optionSettings("")?.isEmpty == true)
        // Every blank PostgreSQL's isspace() knows separates words, "\r\n" included.
        for blank in ["\u{0B}", "\u{0C}", "\r\n"] {
            let split = try #require(GuardedSettings.optionSettings("-c\(blank)standard_conforming_strings=off"))
            #expect(split.map(\.name) == ["standard_conforming_strings"])
            #expect(GuardedSettings.refusal(startupParameter: "options", value: "-c\(blank)standard_conforming_strings=off") != nil)
        }
        for options in ["-B 100", "-c", "-c =x", "--=x", "-c search_path", "-d 5", "-e"] {
            #expect(GuardedSettings.optionSettings(options) == nil, Comment(rawValue: options))
        }
    }

    @Test("startup parameters: lexing ones must be safe, privileged ones are refused, others pass")
    func startup() {
        #expect(GuardedSettings.refusal(startupParameter: "application_name", value: "x") == nil)
        #expect(GuardedSettings.refusal(startupParameter: "client_encoding", value: "UTF8") == nil)
        #expect(GuardedSettings.refusal(startupParameter: "client_encoding", value: "LATIN1") != nil)
        #expect(GuardedSettings.refusal(startupParameter: "standard_conforming_strings", value: "off") != nil)
        #expect(GuardedSettings.refusal(startupParameter: "role", value: "postgres") != nil)
        #expect(GuardedSettings.refusal(startupParameter: "options", value: "-c search_path=public") == nil)
        #expect(GuardedSettings.refusal(startupParameter: "options", value: "--standard-conforming-strings=off") != nil)
        #expect(GuardedSettings.refusal(startupParameter: "options", value: "-c session_authorization=postgres") != nil)
        #expect(GuardedSettings.refusal(startupParameter: "options", value: "-F") != nil)
    }
}
