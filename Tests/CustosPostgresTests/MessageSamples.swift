import NIOCore

@testable import CustosPostgres

/// One of every message, with awkward values (empty strings, NULLs, non-ASCII, negative numbers).
enum MessageSamples {
    static func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    static let frontend: [FrontendMessage] = [
        .bind(.init(portal: "", statement: "s1", parameterFormats: [0, 1], parameters: [bytes("42"), nil, bytes("")], resultFormats: [1])),
        .bind(.init(portal: "p", statement: "", parameterFormats: [], parameters: [], resultFormats: [])),
        .close(.init(kind: UInt8(ascii: "S"), name: "stmt")),
        .close(.init(kind: UInt8(ascii: "P"), name: "")),
        .copyData(bytes("1\tAlice\n")),
        .copyDone,
        .copyFail(message: "client gave up"),
        .describe(.init(kind: UInt8(ascii: "S"), name: "s1")),
        .describe(.init(kind: UInt8(ascii: "P"), name: "")),
        .execute(portal: "", maxRows: 0),
        .execute(portal: "cursor", maxRows: 100),
        .flush,
        .functionCall(.init(function: 764, argumentFormats: [1], arguments: [bytes("x"), nil], resultFormat: 1)),
        .parse(.init(statement: "s1", query: "SELECT $1::int, 'é'", parameterTypes: [23, 0, 4_294_967_295])),
        .password(bytes("eyJhbGciOi.token\u{0}")),
        .query("SELECT 1; SELECT 'naïve'"),
        .query(""),
        .sync,
        .terminate,
    ]

    static let backend: [BackendMessage] = [
        .authentication(.ok),
        .authentication(.kerberosV5),
        .authentication(.cleartextPassword),
        .authentication(.md5Password(salt: [1, 2, 3, 4])),
        .authentication(.gss),
        .authentication(.gssContinue(bytes("gss"))),
        .authentication(.sspi),
        .authentication(.sasl(mechanisms: ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])),
        .authentication(.saslContinue(bytes("r=abc,s=c2FsdA==,i=4096"))),
        .authentication(.saslFinal(bytes("v=c2ln"))),
        .backendKeyData(processID: 1234, secretKey: -99),
        .bindComplete,
        .closeComplete,
        .commandComplete(tag: "INSERT 0 5"),
        .copyData(bytes("a,b\n")),
        .copyDone,
        .copyInResponse(.init(format: 0, columnFormats: [0, 0])),
        .copyOutResponse(.init(format: 1, columnFormats: [1])),
        .copyBothResponse(.init(format: 0, columnFormats: [])),
        .dataRow([bytes("1"), nil, bytes(""), bytes("ünïcode")]),
        .dataRow([]),
        .emptyQueryResponse,
        .errorResponse(ErrorFields(severity: "ERROR", sqlstate: "22012", message: "division by zero", hint: "don't")),
        .functionCallResponse(nil),
        .functionCallResponse(bytes("result")),
        .negotiateProtocolVersion(minor: 0, unrecognized: ["_pq_.x"]),
        .noData,
        .noticeResponse(ErrorFields([(UInt8(ascii: "S"), "NOTICE"), (UInt8(ascii: "M"), "hello")])),
        .notification(processID: 77, channel: "jobs", payload: "{\"id\":1}"),
        .parameterDescription([23, 25, 4_294_967_295]),
        .parameterStatus(name: "client_encoding", value: "UTF8"),
        .parseComplete,
        .portalSuspended,
        .readyForQuery(.idle),
        .readyForQuery(.inTransaction),
        .readyForQuery(.failed),
        .rowDescription([
            .init(name: "id", tableOID: 16384, attribute: 1, typeOID: 23, typeSize: 4, typeModifier: -1, format: 0),
            .init(name: "email", tableOID: 16384, attribute: 3, typeOID: 25, typeSize: -1, typeModifier: -1, format: 1),
        ]),
    ]

    static let startup: [StartupPacket] = [
        .sslRequest,
        .gssEncRequest,
        .cancel(processID: 42, secretKey: -7),
        .startup(version: StartupPacket.protocol3, parameters: [.init("user", "agent"), .init("database", "appdb"), .init("application_name", "psql")]),
        .startup(version: StartupPacket.protocol3, parameters: []),
    ]
}
