import NIOCore

/// A message a server sends, decoded.
public enum BackendMessage: Sendable, Equatable {
    case authentication(Authentication)
    case backendKeyData(processID: Int32, secretKey: Int32)
    case bindComplete
    case closeComplete
    case commandComplete(tag: String)
    case copyData(ByteBuffer)
    case copyDone
    case copyInResponse(CopyResponse)
    case copyOutResponse(CopyResponse)
    case copyBothResponse(CopyResponse)
    case dataRow([ByteBuffer?])
    case emptyQueryResponse
    case errorResponse(ErrorFields)
    case functionCallResponse(ByteBuffer?)
    case negotiateProtocolVersion(minor: Int32, unrecognized: [String])
    case noData
    case noticeResponse(ErrorFields)
    case notification(processID: Int32, channel: String, payload: String)
    case parameterDescription([UInt32])
    case parameterStatus(name: String, value: String)
    case parseComplete
    case portalSuspended
    case readyForQuery(TransactionStatus)
    case rowDescription([Column])

    /// The Authentication request variants.
    public enum Authentication: Sendable, Equatable {
        case ok
        case kerberosV5
        case cleartextPassword
        case md5Password(salt: [UInt8])
        case gss
        case gssContinue(ByteBuffer)
        case sspi
        case sasl(mechanisms: [String])
        case saslContinue(ByteBuffer)
        case saslFinal(ByteBuffer)
    }

    /// Transaction status reported by ReadyForQuery.
    public enum TransactionStatus: UInt8, Sendable {
        case idle = 73  // I
        case inTransaction = 84  // T
        case failed = 69  // E
    }

    /// CopyIn/Out/Both: overall format and per-column formats.
    public struct CopyResponse: Sendable, Equatable {
        public var format: Int8
        public var columnFormats: [Int16]

        public init(format: Int8, columnFormats: [Int16]) {
            self.format = format
            self.columnFormats = columnFormats
        }
    }

    /// A RowDescription column.
    public struct Column: Sendable, Equatable {
        public var name: String
        public var tableOID: UInt32
        public var attribute: Int16
        public var typeOID: UInt32
        public var typeSize: Int16
        public var typeModifier: Int32
        public var format: Int16

        public init(name: String, tableOID: UInt32, attribute: Int16, typeOID: UInt32, typeSize: Int16, typeModifier: Int32, format: Int16) {
            self.name = name
            self.tableOID = tableOID
            self.attribute = attribute
            self.typeOID = typeOID
            self.typeSize = typeSize
            self.typeModifier = typeModifier
            self.format = format
        }
    }

    /// The type byte of this message.
    public var type: UInt8 {
        switch self {
        case .authentication: UInt8(ascii: "R")
        case .backendKeyData: UInt8(ascii: "K")
        case .bindComplete: UInt8(ascii: "2")
        case .closeComplete: UInt8(ascii: "3")
        case .commandComplete: UInt8(ascii: "C")
        case .copyData: UInt8(ascii: "d")
        case .copyDone: UInt8(ascii: "c")
        case .copyInResponse: UInt8(ascii: "G")
        case .copyOutResponse: UInt8(ascii: "H")
        case .copyBothResponse: UInt8(ascii: "W")
        case .dataRow: UInt8(ascii: "D")
        case .emptyQueryResponse: UInt8(ascii: "I")
        case .errorResponse: UInt8(ascii: "E")
        case .functionCallResponse: UInt8(ascii: "V")
        case .negotiateProtocolVersion: UInt8(ascii: "v")
        case .noData: UInt8(ascii: "n")
        case .noticeResponse: UInt8(ascii: "N")
        case .notification: UInt8(ascii: "A")
        case .parameterDescription: UInt8(ascii: "t")
        case .parameterStatus: UInt8(ascii: "S")
        case .parseComplete: UInt8(ascii: "1")
        case .portalSuspended: UInt8(ascii: "s")
        case .readyForQuery: UInt8(ascii: "Z")
        case .rowDescription: UInt8(ascii: "T")
        }
    }

    /// Decodes a frame's body.
    public static func decode(_ frame: PostgresFrame) throws(WireError) -> BackendMessage {
        var body = frame.body
        let type = frame.type
        let message: BackendMessage
        switch type {
        case UInt8(ascii: "R"):
            message = .authentication(try decodeAuthentication(&body, type: type))
        case UInt8(ascii: "K"):
            message = .backendKeyData(processID: try body.readInt32(type: type), secretKey: try body.readInt32(type: type))
        case UInt8(ascii: "2"): message = .bindComplete
        case UInt8(ascii: "3"): message = .closeComplete
        case UInt8(ascii: "C"): message = .commandComplete(tag: try body.readCString(type: type))
        case UInt8(ascii: "d"):
            message = .copyData(body)
            body.moveReaderIndex(to: body.writerIndex)
        case UInt8(ascii: "c"): message = .copyDone
        case UInt8(ascii: "G"), UInt8(ascii: "H"), UInt8(ascii: "W"):
            guard let format = body.readInteger(as: Int8.self) else { throw WireError(.truncated, type: type) }
            let response = CopyResponse(format: format, columnFormats: try readInt16Array(&body, type: type))
            message = type == UInt8(ascii: "G") ? .copyInResponse(response) : type == UInt8(ascii: "H") ? .copyOutResponse(response) : .copyBothResponse(response)
        case UInt8(ascii: "D"):
            let count = Int(try body.readInt16(type: type))
            var values: [ByteBuffer?] = []
            values.reserveCapacity(max(0, count))
            for _ in 0..<max(0, count) { values.append(try body.readLengthPrefixed(type: type)) }
            message = .dataRow(values)
        case UInt8(ascii: "I"): message = .emptyQueryResponse
        case UInt8(ascii: "E"): message = .errorResponse(try ErrorFields.decode(&body, type: type))
        case UInt8(ascii: "N"): message = .noticeResponse(try ErrorFields.decode(&body, type: type))
        case UInt8(ascii: "V"): message = .functionCallResponse(try body.readLengthPrefixed(type: type))
        case UInt8(ascii: "v"):
            let minor = try body.readInt32(type: type)
            let count = try body.readInt32(type: type)
            var names: [String] = []
            for _ in 0..<max(0, count) { names.append(try body.readCString(type: type)) }
            message = .negotiateProtocolVersion(minor: minor, unrecognized: names)
        case UInt8(ascii: "n"): message = .noData
        case UInt8(ascii: "A"):
            message = .notification(processID: try body.readInt32(type: type), channel: try body.readCString(type: type), payload: try body.readCString(type: type))
        case UInt8(ascii: "t"):
            let count = Int(try body.readInt16(type: type))
            var oids: [UInt32] = []
            for _ in 0..<max(0, count) { oids.append(UInt32(bitPattern: try body.readInt32(type: type))) }
            message = .parameterDescription(oids)
        case UInt8(ascii: "S"): message = .parameterStatus(name: try body.readCString(type: type), value: try body.readCString(type: type))
        case UInt8(ascii: "1"): message = .parseComplete
        case UInt8(ascii: "s"): message = .portalSuspended
        case UInt8(ascii: "Z"):
            guard let status = TransactionStatus(rawValue: try body.readByte(type: type)) else { throw WireError(.truncated, type: type) }
            message = .readyForQuery(status)
        case UInt8(ascii: "T"):
            let count = Int(try body.readInt16(type: type))
            var columns: [Column] = []
            for _ in 0..<max(0, count) {
                columns.append(
                    Column(
                        name: try body.readCString(type: type), tableOID: UInt32(bitPattern: try body.readInt32(type: type)),
                        attribute: try body.readInt16(type: type), typeOID: UInt32(bitPattern: try body.readInt32(type: type)),
                        typeSize: try body.readInt16(type: type), typeModifier: try body.readInt32(type: type), format: try body.readInt16(type: type)))
            }
            message = .rowDescription(columns)
        default:
            throw WireError(.unknownMessageType, type: type, raw: frame.raw)
        }
        try body.expectEnd(type: type)
        return message
    }

    private static func decodeAuthentication(_ body: inout ByteBuffer, type: UInt8) throws(WireError) -> Authentication {
        let code = try body.readInt32(type: type)
        switch code {
        case 0: return .ok
        case 2: return .kerberosV5
        case 3: return .cleartextPassword
        case 5:
            let salt = try body.readBytes(4, type: type)
            return .md5Password(salt: Array(salt.readableBytesView))
        case 7: return .gss
        case 8:
            let data = body
            body.moveReaderIndex(to: body.writerIndex)
            return .gssContinue(data)
        case 9: return .sspi
        case 10:
            var mechanisms: [String] = []
            while true {
                let name = try body.readCString(type: type)
                if name.isEmpty { break }
                mechanisms.append(name)
            }
            return .sasl(mechanisms: mechanisms)
        case 11, 12:
            let data = body
            body.moveReaderIndex(to: body.writerIndex)
            return code == 11 ? .saslContinue(data) : .saslFinal(data)
        default:
            throw WireError(.unexpectedMessage, type: type)
        }
    }

    /// Encodes the message with its type byte and length.
    public func encode(into buffer: inout ByteBuffer) {
        writeMessage(self.type, into: &buffer) { out in
            switch self {
            case .authentication(let auth):
                switch auth {
                case .ok: out.writeInteger(Int32(0))
                case .kerberosV5: out.writeInteger(Int32(2))
                case .cleartextPassword: out.writeInteger(Int32(3))
                case .md5Password(let salt):
                    out.writeInteger(Int32(5))
                    out.writeBytes(salt)
                case .gss: out.writeInteger(Int32(7))
                case .gssContinue(var data):
                    out.writeInteger(Int32(8))
                    out.writeBuffer(&data)
                case .sspi: out.writeInteger(Int32(9))
                case .sasl(let mechanisms):
                    out.writeInteger(Int32(10))
                    for mechanism in mechanisms { out.writeCString(mechanism) }
                    out.writeInteger(UInt8(0))
                case .saslContinue(var data):
                    out.writeInteger(Int32(11))
                    out.writeBuffer(&data)
                case .saslFinal(var data):
                    out.writeInteger(Int32(12))
                    out.writeBuffer(&data)
                }
            case .backendKeyData(let processID, let secretKey):
                out.writeInteger(processID)
                out.writeInteger(secretKey)
            case .bindComplete, .closeComplete, .copyDone, .emptyQueryResponse, .noData, .parseComplete, .portalSuspended:
                break
            case .commandComplete(let tag):
                out.writeCString(tag)
            case .copyData(var data):
                out.writeBuffer(&data)
            case .copyInResponse(let response), .copyOutResponse(let response), .copyBothResponse(let response):
                out.writeInteger(response.format)
                writeInt16Array(response.columnFormats, into: &out)
            case .dataRow(let values):
                out.writeInteger(Int16(values.count))
                for value in values { out.writeLengthPrefixed(value) }
            case .errorResponse(let fields), .noticeResponse(let fields):
                fields.encode(into: &out)
            case .functionCallResponse(let value):
                out.writeLengthPrefixed(value)
            case .negotiateProtocolVersion(let minor, let unrecognized):
                out.writeInteger(minor)
                out.writeInteger(Int32(unrecognized.count))
                for name in unrecognized { out.writeCString(name) }
            case .notification(let processID, let channel, let payload):
                out.writeInteger(processID)
                out.writeCString(channel)
                out.writeCString(payload)
            case .parameterDescription(let oids):
                out.writeInteger(Int16(oids.count))
                for oid in oids { out.writeInteger(oid) }
            case .parameterStatus(let name, let value):
                out.writeCString(name)
                out.writeCString(value)
            case .readyForQuery(let status):
                out.writeInteger(status.rawValue)
            case .rowDescription(let columns):
                out.writeInteger(Int16(columns.count))
                for column in columns {
                    out.writeCString(column.name)
                    out.writeInteger(column.tableOID)
                    out.writeInteger(column.attribute)
                    out.writeInteger(column.typeOID)
                    out.writeInteger(column.typeSize)
                    out.writeInteger(column.typeModifier)
                    out.writeInteger(column.format)
                }
            }
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse, in the order sent.
public struct ErrorFields: Sendable, Equatable {
    public var fields: [(code: UInt8, value: String)]

    public init(_ fields: [(code: UInt8, value: String)]) {
        self.fields = fields
    }

    /// A gateway-made error: severity, SQLSTATE, message and optional hint.
    public init(severity: String, sqlstate: String, message: String, hint: String? = nil) {
        var fields: [(code: UInt8, value: String)] = [
            (UInt8(ascii: "S"), severity), (UInt8(ascii: "V"), severity), (UInt8(ascii: "C"), sqlstate), (UInt8(ascii: "M"), message),
        ]
        if let hint { fields.append((UInt8(ascii: "H"), hint)) }
        self.init(fields)
    }

    public subscript(code: Character) -> String? {
        let byte = code.asciiValue!
        return fields.first { $0.code == byte }?.value
    }

    /// The SQLSTATE (`C` field).
    public var sqlstate: String? { self["C"] }
    /// The primary message (`M` field).
    public var message: String? { self["M"] }

    public static func == (lhs: ErrorFields, rhs: ErrorFields) -> Bool {
        lhs.fields.elementsEqual(rhs.fields) { $0.code == $1.code && $0.value == $1.value }
    }

    static func decode(_ body: inout ByteBuffer, type: UInt8) throws(WireError) -> ErrorFields {
        var fields: [(code: UInt8, value: String)] = []
        while true {
            let code = try body.readByte(type: type)
            if code == 0 { break }
            fields.append((code, try body.readCString(type: type)))
        }
        return ErrorFields(fields)
    }

    func encode(into buffer: inout ByteBuffer) {
        for field in fields {
            buffer.writeInteger(field.code)
            buffer.writeCString(field.value)
        }
        buffer.writeInteger(UInt8(0))
    }
}
