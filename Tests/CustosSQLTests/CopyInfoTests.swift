import CustosCore
import Testing

@testable import CustosSQL

@Suite("PostgresAnalyzer.copyInfo")
struct CopyInfoTests {
    private let analyzer = PostgresAnalyzer()

    @Test func plainCopyToStdout() {
        #expect(analyzer.copyInfo("COPY customers TO STDOUT") == CopyInfo(isFrom: false, table: "customers"))
        let info = analyzer.copyInfo("COPY customers TO STDOUT")
        #expect(info?.format == .text)
        #expect(info?.delimiter == UInt8(ascii: "\t"))
        #expect(info?.null == "\\N")
        #expect(info?.header == false)
    }

    @Test func optionsList() {
        let info = analyzer.copyInfo("COPY public.customers (email, ssn) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';')")
        #expect(info == CopyInfo(isFrom: false, table: "public.customers", columns: ["email", "ssn"], format: .csv, delimiter: UInt8(ascii: ";"), header: true))
        #expect(info?.null == "")
        #expect(info?.quote == UInt8(ascii: "\""))
        #expect(info?.escape == UInt8(ascii: "\""))
    }

    @Test func quoteEscapeNullOptions() {
        let info = analyzer.copyInfo(#"COPY t FROM STDIN (FORMAT CSV, NULL 'x', QUOTE '''', ESCAPE '\', HEADER false)"#)
        #expect(info?.isFrom == true)
        #expect(info?.null == "x")
        #expect(info?.quote == UInt8(ascii: "'"))
        #expect(info?.escape == UInt8(ascii: "\\"))
        #expect(info?.header == false)
    }

    @Test func queryCopy() {
        let info = analyzer.copyInfo("COPY (SELECT email FROM customers WHERE note = ')') TO STDOUT CSV")
        #expect(info?.table == nil)
        #expect(info?.query == "SELECT email FROM customers WHERE note = ')'")
        #expect(info?.format == .csv)
        #expect(info?.isFrom == false)
    }

    @Test func queryTextWithCommentsQuotesAndNesting() {
        let sql = """
            /* lead */ copy -- why
            ( SELECT "a)", $$)$$, (1) FROM t /* ) */ WHERE x = E'\\')' ) TO STDOUT
            """
        #expect(analyzer.copyInfo(sql)?.query == #"SELECT "a)", $$)$$, (1) FROM t /* ) */ WHERE x = E'\')'"#)
        #expect(analyzer.copyInfo("SELECT 1; COPY (SELECT 1) TO STDOUT") == nil)
    }

    @Test func legacySyntax() {
        let info = analyzer.copyInfo("copy customers to stdout with csv header delimiter as '|'")
        #expect(info == CopyInfo(isFrom: false, table: "customers", format: .csv, delimiter: UInt8(ascii: "|"), header: true))
        #expect(analyzer.copyInfo("COPY x FROM STDIN BINARY")?.format == .binary)
        #expect(analyzer.copyInfo("COPY x FROM STDIN WITH DELIMITER ',' NULL AS ''")?.null == "")
    }

    @Test func copyFromStdin() {
        #expect(analyzer.copyInfo("COPY customers (email) FROM STDIN;") == CopyInfo(isFrom: true, table: "customers", columns: ["email"]))
        #expect(analyzer.copyInfo("COPY \"Foo\".\"Bar\" FROM STDIN") == CopyInfo(isFrom: true, table: "Foo.Bar"))
    }

    @Test func headerSpellings() {
        #expect(analyzer.copyInfo("COPY x FROM STDIN (FORMAT csv, HEADER match)")?.header == true)
        #expect(analyzer.copyInfo("COPY x FROM STDIN (FORMAT csv, HEADER on)")?.header == true)
        #expect(analyzer.copyInfo("COPY x FROM STDIN (FORMAT csv, HEADER 0)")?.header == false)
        #expect(analyzer.copyInfo("COPY x FROM STDIN (FORMAT csv, HEADER true)")?.header == true)
    }

    @Test func notACopy() {
        #expect(analyzer.copyInfo("SELECT * FROM customers") == nil)
        #expect(analyzer.copyInfo("COPY customers TO STDOUT; COPY customers TO STDOUT") == nil)
        #expect(analyzer.copyInfo("COPY customers TO") == nil)
        #expect(analyzer.copyInfo("") == nil)
        #expect(analyzer.copyInfo("COPY customers TO STDOUT\0") == nil)
    }
}
