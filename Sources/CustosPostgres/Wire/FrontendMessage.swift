import NIOCore

/// A message a client sends, decoded. The proxy decodes only what it inspects; the rest it
/// forwards as raw frames, but every message has a full decoder and encoder here.
public enum FrontendMessage: Sendable, Equatable {
    case bind(Bind)
    case close(CloseTarget)
    case copyData(ByteBuffer)
    case copyDone
    case copyFail(message: String)
    case describe(CloseTarget)
    case execute(portal: String, maxRows: Int32)
    case flush
    case functionCall(FunctionCall)
    case parse(Parse)
    /// `p`: a password, SASLInitialResponse or SASLResponse; which one depends on the state.
    case password(ByteBuffer)
    case query(String)
    case sync
    case terminate

    /// Bind: portal, prepared statement, parameter formats and values, result formats.
    public struct Bind: Sendable, Equatable {
        public var portal: String
        public var statement: String
        public var parameterFormats: [Int16]
        public var parameters: [ByteBuffer?]
        public var resultFormats: [Int16]

        public init(portal: String, statement: String, parameterFormats: [Int16], parameters: [ByteBuffer?], resultFormats: [Int16]) {
            self.portal = portal
            self.statement = statement
            self.parameterFormats = parameterFormats
            self.parameters = parameters
            self.resultFormats = resultFormats
        }

        /// The format code of parameter `index` (one code applies to all; none means text).
        public func format(of index: Int) -> Int16 {
            switch parameterFormats.count {
            case 0: return 0
            case 1: return parameterFormats[0]
            default: return index < parameterFormats.count ? parameterFormats[index] : 0
            }
        }
    }

    /// Close or Describe target: `S` prepared statement or `P` portal, and its name.
    public struct CloseTarget: Sendable, Equatable {
        public var kind: UInt8
        public var name: String

        public init(kind: UInt8, name: String) {
            self.kind = kind
            self.name = name
        }
    }

    /// FunctionCall (the legacy fast-path interface).
    public struct FunctionCall: Sendable, Equatable {
        public var function: Int32
        public var argumentFormats: [Int16]
        public var arguments: [ByteBuffer?]
        public var resultFormat: Int16

        public init(function: Int32, argumentFormats: [Int16], arguments: [ByteBuffer?], resultFormat: Int16) {
            self.function = function
            self.argumentFormats = argumentFormats
            self.arguments = arguments
            self.resultFormat = resultFormat
        }
    }

    /// Parse: statement name, query text, parameter type OIDs.
    public struct Parse: Sendable, Equatable {
        public var statement: String
        public var query: String
        public var parameterTypes: [UInt32]

        public init(statement: String, query: String, parameterTypes: [UInt32]) {
            self.statement = statement
            self.query = query
            self.parameterTypes = parameterTypes
        }
    }

    /// The type byte of this message.
    public var type: UInt8 {
        switch self {
        case .bind: UInt8(ascii: "B")
        case .close: UInt8(ascii: "C")
        case .copyData: UInt8(ascii: "d")
        case .copyDone: UInt8(ascii: "c")
        case .copyFail: UInt8(ascii: "f")
        case .describe: UInt8(ascii: "D")
        case .execute: UInt8(ascii: "E")
        case .flush: UInt8(ascii: "H")
        case .functionCall: UInt8(ascii: "F")
        case .parse: UInt8(ascii: "P")
        case .password: UInt8(ascii: "p")
        case .query: UInt8(ascii: "Q")
        case .sync: UInt8(ascii: "S")
        case .terminate: UInt8(ascii: "X")
        }
    }

    /// Decodes a frame's body.
    public static func decode(_ frame: PostgresFrame) throws(WireError) -> FrontendMessage {
        var body = frame.body
        let type = frame.type
        let message: FrontendMessage
        switch type {
        case UInt8(ascii: "B"):
            let portal = try body.readName(type: type)
            let statement = try body.readName(type: type)
            let formats = try readInt16Array(&body, type: type)
            let count = Int(try body.readInt16(type: type))
            var parameters: [ByteBuffer?] = []
            for _ in 0..<max(0, count) { parameters.append(try body.readLengthPrefixed(type: type)) }
            let resultFormats = try readInt16Array(&body, type: type)
            message = .bind(Bind(portal: portal, statement: statement, parameterFormats: formats, parameters: parameters, resultFormats: resultFormats))
        case UInt8(ascii: "C"):
            message = .close(CloseTarget(kind: try body.readByte(type: type), name: try body.readName(type: type)))
        case UInt8(ascii: "d"):
            message = .copyData(body)
            body.moveReaderIndex(to: body.writerIndex)
        case UInt8(ascii: "c"):
            message = .copyDone
        case UInt8(ascii: "f"):
            message = .copyFail(message: try body.readCString(type: type))
        case UInt8(ascii: "D"):
            message = .describe(CloseTarget(kind: try body.readByte(type: type), name: try body.readName(type: type)))
        case UInt8(ascii: "E"):
            message = .execute(portal: try body.readName(type: type), maxRows: try body.readInt32(type: type))
        case UInt8(ascii: "H"):
            message = .flush
        case UInt8(ascii: "F"):
            let function = try body.readInt32(type: type)
            let formats = try readInt16Array(&body, type: type)
            let count = Int(try body.readInt16(type: type))
            var arguments: [ByteBuffer?] = []
            for _ in 0..<max(0, count) { arguments.append(try body.readLengthPrefixed(type: type)) }
            let resultFormat = try body.readInt16(type: type)
            message = .functionCall(FunctionCall(function: function, argumentFormats: formats, arguments: arguments, resultFormat: resultFormat))
        case UInt8(ascii: "P"):
            let statement = try body.readName(type: type)
            let query = try body.readText(type: type)
            let count = Int(try body.readInt16(type: type))
            var types: [UInt32] = []
            for _ in 0..<max(0, count) { types.append(UInt32(bitPattern: try body.readInt32(type: type))) }
            message = .parse(Parse(statement: statement, query: query, parameterTypes: types))
        case UInt8(ascii: "p"):
            message = .password(body)
            body.moveReaderIndex(to: body.writerIndex)
        case UInt8(ascii: "Q"):
            message = .query(try body.readText(type: type))
        case UInt8(ascii: "S"):
            message = .sync
        case UInt8(ascii: "X"):
            message = .terminate
        default:
            throw WireError(.unknownMessageType, type: type, raw: frame.raw)
        }
        try body.expectEnd(type: type)
        return message
    }

    /// Encodes the message with its type byte and length.
    public func encode(into buffer: inout ByteBuffer) {
        writeMessage(self.type, into: &buffer) { out in
            switch self {
            case .bind(let bind):
                out.writeCString(bind.portal)
                out.writeCString(bind.statement)
                writeInt16Array(bind.parameterFormats, into: &out)
                out.writeInteger(Int16(bind.parameters.count))
                for parameter in bind.parameters { out.writeLengthPrefixed(parameter) }
                writeInt16Array(bind.resultFormats, into: &out)
            case .close(let target), .describe(let target):
                out.writeInteger(target.kind)
                out.writeCString(target.name)
            case .copyData(var data), .password(var data):
                out.writeBuffer(&data)
            case .copyDone, .flush, .sync, .terminate:
                break
            case .copyFail(let message):
                out.writeCString(message)
            case .execute(let portal, let maxRows):
                out.writeCString(portal)
                out.writeInteger(maxRows)
            case .functionCall(let call):
                out.writeInteger(call.function)
                writeInt16Array(call.argumentFormats, into: &out)
                out.writeInteger(Int16(call.arguments.count))
                for argument in call.arguments { out.writeLengthPrefixed(argument) }
                out.writeInteger(call.resultFormat)
            case .parse(let parse):
                out.writeCString(parse.statement)
                out.writeCString(parse.query)
                out.writeInteger(Int16(parse.parameterTypes.count))
                for oid in parse.parameterTypes { out.writeInteger(oid) }
            case .query(let text):
                out.writeCString(text)
            }
        }
    }
}

func readInt16Array(_ body: inout ByteBuffer, type: UInt8) throws(WireError) -> [Int16] {
    let count = Int(try body.readInt16(type: type))
    var values: [Int16] = []
    for _ in 0..<max(0, count) { values.append(try body.readInt16(type: type)) }
    return values
}

func writeInt16Array(_ values: [Int16], into buffer: inout ByteBuffer) {
    buffer.writeInteger(Int16(values.count))
    for value in values { buffer.writeInteger(value) }
}
