import CustosCore
import NIOCore

/// The result set being streamed, found once for its first row. A class: taking it for each row
/// costs one reference, not one per member.
final class RowContext {
    let number: Int
    let plan: RowPlan
    let capture: ResultCapture?
    let values: ValueMasker

    init(number: Int, plan: RowPlan, capture: ResultCapture?, values: ValueMasker) {
        self.number = number
        self.plan = plan
        self.capture = capture
        self.values = values
    }
}

/// Masking and capture of what the backend returns: every RowDescription becomes a ``RowPlan``
/// (after the catalog has said where its columns come from), every DataRow and COPY row is masked
/// by it and digested raw, and errors and notices lose the data they echo.
extension ClientSession {
    /// Plans a RowDescription or CopyOutResponse before it is processed. False when the frame
    /// waits for a catalog answer: it (and every backend frame after it) is parked until then.
    func prepareResult(_ frame: PostgresFrame) -> Bool {
        switch frame.type {
        case UInt8(ascii: "T"):
            guard case .rowDescription(let columns)? = try? BackendMessage.decode(frame) else { return true }
            let profile = maskingProfile
            if profile.hasColumnRules, let catalog {
                let unknown = Set(columns.map(\.tableOID)).filter { $0 != 0 && catalog.cached($0) == nil && !catalogMisses.contains($0) }
                if !unknown.isEmpty {
                    pauseBackend(frame)
                    catalog.resolve(unknown, on: context.eventLoop).assumeIsolated().whenComplete { [self] _ in
                        // Whatever the answer, an OID still unknown (a table another transaction
                        // cannot see yet) is not asked again: its columns are redacted.
                        catalogMisses.formUnion(unknown.filter { catalog.cached($0) == nil })
                        resumeBackend()
                    }
                    return false
                }
            }
            let plan = RowPlan.make(columns, profile: profile) { [catalog] oid in catalog?.cached(oid) }
            switch tracker.head {
            case .query(let statement?):
                queryPlan = plan
                captures[statement.number]?.describe(plan)
            case .describePortal(let portal), .describeInternal(let portal):
                portalPlans[exact: portal] = plan
            default:
                break
            }
        case UInt8(ascii: "n"):
            switch tracker.head {
            case .describePortal(let portal), .describeInternal(let portal): portalPlans[exact: portal] = .empty
            default: break
            }
        case UInt8(ascii: "H"):
            if let ready = readyCopyPlan {
                copyPlan = ready
                readyCopyPlan = nil
                return true
            }
            copyPlan = nil
            guard let number = tracker.headStatement?.number, var infos = copyInfos[number], !infos.isEmpty else { return true }
            let info = infos.removeFirst()
            copyInfos[number] = infos
            let profile = maskingProfile
            guard !profile.isEmpty else { return true }
            guard profile.hasColumnRules, let catalog else {
                copyPlan = CopyPlan(info: info, columns: nil, profile: profile)
                return true
            }
            pauseBackend(frame)
            planCopy(info, catalog: catalog, profile: profile).assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success(let plan): readyCopyPlan = plan
                case .failure(let error):
                    logger.warning("COPY columns unknown; every field is redacted", metadata: ["error": "\(error)"])
                    readyCopyPlan = CopyPlan(info: info, columns: nil, profile: profile)
                }
                resumeBackend()
            }
            return false
        default:
            break
        }
        return true
    }

    /// The columns a `COPY … TO` sends, from the catalog: the table's (or the listed) columns, or
    /// the description of the copied query.
    private func planCopy(_ info: CopyInfo, catalog: Catalog, profile: MaskingProfile) -> EventLoopFuture<CopyPlan> {
        let loop = context.eventLoop
        if let table = info.table {
            return catalog.table(named: table, on: loop).flatMapThrowing { found in
                guard let found else { throw CatalogError(reason: "table \(table) not found") }
                // The listed columns (or all), as text-format result columns of this table.
                let listed = info.columns.isEmpty ? found.columns : info.columns.map { name in
                    found.columns.first { $0.name == name } ?? (number: 0, name: name, type: 0)
                }
                let columns = listed.map {
                    BackendMessage.Column(name: $0.name, tableOID: found.oid, attribute: $0.number, typeOID: $0.type, typeSize: -1, typeModifier: -1, format: 0)
                }
                return CopyPlan(info: info, columns: RowPlan.make(columns, profile: profile) { $0 == found.oid ? found : catalog.cached($0) }.columns, profile: profile)
            }
        }
        guard let query = info.query else { return loop.makeFailedFuture(CatalogError(reason: "COPY without a table or query")) }
        return catalog.describe(query, on: loop).flatMap { columns in
            catalog.resolve(Set(columns.map(\.tableOID)), on: loop).map {
                let plan = RowPlan.make(columns.map { var text = $0; text.format = 0; return text }, profile: profile) { catalog.cached($0) }
                return CopyPlan(info: info, columns: plan.columns, profile: profile)
            }
        }
    }

    private func pauseBackend(_ frame: PostgresFrame) {
        pausedFrames = [frame]
    }

    /// Processes the parked frames in order (one may park the rest again), then reads on.
    private func resumeBackend() {
        guard !isClosed, let frames = pausedFrames else { return }
        pausedFrames = nil
        for frame in frames {
            if pausedFrames != nil {
                pausedFrames!.append(frame)
            } else {
                backendFrame(frame)
            }
        }
        if pausedFrames == nil { backendReadComplete() }
    }

    /// What became of a backend message on its way to the client.
    enum Masked {
        case unchanged
        case replaced(PostgresFrame)
        /// Rewritten into the client batch (``ClientSession/clientBatch``): nothing more to send.
        case batched
    }

    /// Masks and captures a backend message about to reach the client.
    func maskResult(_ frame: PostgresFrame) -> Masked {
        switch frame.type {
        case UInt8(ascii: "D"):
            if rowContext == nil {
                if let context = makeRowContext(frame) {
                    rowContext = context
                } else if maskingProfile.isEmpty {
                    return .unchanged
                } else {
                    // Rows no statement accounts for, while masking applies: every value NULL.
                    rowContext = RowContext(
                        number: -1, plan: unknownPlan(frame), capture: nil, values: ValueMasker(masker: gateway.masker, detectors: maskingProfile.detectors))
                }
            }
            let current = rowContext!
            do {
                let rewritten = try DataRowMasking.process(
                    frame, plan: current.plan, values: current.values, capture: current.capture, scratch: rowScratch, into: &clientBatch)
                if rewritten {
                    clientNeedsFlush = true
                    if clientBatch.readableBytes >= 64 * 1024 { emitClientBatch() }
                    return .batched
                }
                return .unchanged
            } catch {
                // Never forward a row that could not be read (and so not masked).
                terminate(sqlstate: "08P01", message: "the backend sent a malformed row", outcome: "error", reason: "malformed DataRow from backend")
                return .unchanged
            }
        case UInt8(ascii: "d"):
            if copyPlan == nil, !maskingProfile.isEmpty {
                // COPY output Custos did not plan for, while masking applies: nothing of it leaves.
                copyPlan = CopyPlan.redactingAll(CopyInfo(isFrom: false, table: nil))
            }
            guard let number = tracker.headStatement?.number else {
                let masked = copyPlan?.mask(Array(frame.body.readableBytesView), values: ValueMasker(masker: gateway.masker, detectors: maskingProfile.detectors))
                guard let masked else { return .unchanged }
                var body = context.channel.allocator.buffer(capacity: masked.count)
                body.writeBytes(masked)
                return .replaced(PostgresFrame(type: UInt8(ascii: "d"), body: body))
            }
            let row = Array(frame.body.readableBytesView)
            let format = Int16(copyPlan?.info.format == .binary ? 1 : 0)
            var encoded: [UInt8] = []
            DataRowMasking.append(UInt16(1), to: &encoded)
            DataRowMasking.append(UInt16(bitPattern: format), to: &encoded)
            DataRowMasking.append(UInt32(row.count), to: &encoded)
            encoded += row
            captures[number]?.digest.add(row: encoded)
            let masked = copyPlan?.mask(row, values: ValueMasker(masker: gateway.masker, detectors: maskingProfile.detectors))
            if captures[number]?.wantsSample == true {
                captures[number]?.sample.append([String(decoding: masked ?? row, as: UTF8.self)])
            }
            guard let masked else { return .unchanged }
            var body = context.channel.allocator.buffer(capacity: masked.count)
            body.writeBytes(masked)
            return .replaced(PostgresFrame(type: UInt8(ascii: "d"), body: body))
        case UInt8(ascii: "c"):
            copyPlan = nil
            return .unchanged
        case UInt8(ascii: "C"), UInt8(ascii: "s"), UInt8(ascii: "I"), UInt8(ascii: "T"), UInt8(ascii: "n"):
            rowContext = nil  // the result set ends (or a new one begins)
            return .unchanged
        case UInt8(ascii: "E"), UInt8(ascii: "N"):
            if frame.type == UInt8(ascii: "E") { rowContext = nil }
            guard !maskingProfile.isEmpty, let message = try? BackendMessage.decode(frame) else { return .unchanged }
            let fields: ErrorFields
            switch message {
            case .errorResponse(let f), .noticeResponse(let f): fields = f
            default: return .unchanged
            }
            guard let masked = ErrorMasking.mask(fields, profile: maskingProfile, masker: gateway.masker) else { return .unchanged }
            var buffer = context.channel.allocator.buffer(capacity: frame.raw.readableBytes + 32)
            (frame.type == UInt8(ascii: "E") ? BackendMessage.errorResponse(masked) : .noticeResponse(masked)).encode(into: &buffer)
            return .replaced(PostgresFrame(type: frame.type, body: buffer.getSlice(at: buffer.readerIndex + 5, length: buffer.readableBytes - 5)!, raw: buffer))
        case UInt8(ascii: "Z"):
            queryPlan = nil
            rowContext = nil
            return .unchanged
        default:
            return .unchanged
        }
    }

    /// The statement, plan and capture of the result set whose rows arrive now.
    private func makeRowContext(_ frame: PostgresFrame) -> RowContext? {
        guard let statement = tracker.headStatement else { return nil }
        let plan: RowPlan
        switch tracker.head {
        case .execute: plan = statement.portal.flatMap { portalPlans[exact: $0] } ?? unknownPlan(frame)
        case .query: plan = queryPlan ?? unknownPlan(frame)
        default: return nil
        }
        let capture = captures[statement.number]
        capture?.describe(plan)
        return RowContext(number: statement.number, plan: plan, capture: capture, values: ValueMasker(masker: gateway.masker, detectors: maskingProfile.detectors))
    }

    /// Rows with no description seen (never expected: Custos describes every portal it
    /// executes): each value becomes NULL.
    private func unknownPlan(_ frame: PostgresFrame) -> RowPlan {
        var body = frame.body
        let count = Int(body.readInteger(as: Int16.self) ?? 0)
        logger.warning("rows without a description; every value is sent as NULL")
        return RowPlan.unknown(count: max(0, count))
    }
}

extension ClientSession {
    /// The statement as it is recorded: literals and parameters that touch masked columns,
    /// passwords and detected values masked (docs/masking.md).
    func recordedForm(of action: Action) -> SessionEvents.RecordedStatement {
        var uses: [LiteralUse] = []
        if RecordMasking.needsLiteralUses(action.statements, profile: maskingProfile) {
            if let cached = literalUseCache[exact: action.text] {
                uses = cached
            } else {
                uses = gateway.gate.literalUses(action.text)
                if literalUseCache.count >= 256 { literalUseCache.removeAll() }
                literalUseCache[exact: action.text] = uses
            }
        }
        let masked = gateway.recordMasking.mask(text: action.text, parameters: action.parameters, uses: uses, profile: maskingProfile)
        return SessionEvents.RecordedStatement(text: masked.text, parameters: masked.parameters, masked: masked.masked)
    }

    /// Notes the `COPY … TO` statements of an allowed action so their output can be masked; an
    /// error when one cannot be (binary format while masking applies).
    func planCopies(_ action: Action) -> ErrorFields? {
        guard action.statements.contains(where: { $0.kind == "copy" }) else { return nil }
        var infos: [CopyInfo] = []
        for statement in action.statements where statement.kind == "copy" {
            guard let info = gateway.gate.copyInfo(statement.text) else {
                if maskingProfile.isEmpty { continue }
                return ErrorFields(severity: "ERROR", sqlstate: "0A000", message: "this COPY cannot be masked (its form was not understood); it was not run")
            }
            guard !info.isFrom else { continue }
            if info.format == .binary, !maskingProfile.isEmpty {
                return ErrorFields(
                    severity: "ERROR", sqlstate: "0A000", message: "COPY TO in binary format cannot be masked; use text or CSV format",
                    hint: "masking applies to this identity on this connection")
            }
            infos.append(info)
        }
        if !infos.isEmpty { copyInfos[statementCount] = infos }
        return nil
    }
}
