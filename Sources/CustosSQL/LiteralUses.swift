import CustosCore

/// Finds the literals and `$n` parameters of a parse tree that are compared with or assigned to a
/// column, and the passwords (see ``PostgresAnalyzer/literalUses(_:)``).
///
/// - Comparisons: any `A_Expr` (operators, `ANY`/`ALL`, `IN`, `LIKE`/`ILIKE`/`SIMILAR`, `BETWEEN`,
///   `IS [NOT] DISTINCT FROM`, `NULLIF`), simple `CASE x WHEN …`, and a function's arguments
///   (`starts_with(email, 'b')`, `coalesce(ssn, '')`): each value on one side is a use of each
///   column on the other. Row comparisons `(a, b) = ('x', 'y')` pair element by element.
/// - Assignments: INSERT (VALUES rows, SELECT output; `*` without a column list), UPDATE SET
///   (also `SET (a, b) = …`), ON CONFLICT DO UPDATE, MERGE.
/// - Passwords: role `PASSWORD`, `password` options of user mappings and foreign servers, and a
///   subscription's whole `CONNECTION` string.
///
/// Not found: values that reach a column through a scalar subquery, a CTE or `VALUES` in FROM
/// (`email = (SELECT 'x')`; `email IN (SELECT 'x')` is found), `EXECUTE p('x')` (the prepared statement's `$n` uses say where its
/// parameters go), function bodies and `DO` blocks (their text is a string the parser does not
/// open), passwords given to functions (`dblink_connect('… password=…')`), and values more than
/// ``depthLimit`` wrappers deep inside a side. NULL is never a use.
///
/// The walk is iterative (an explicit stack), like ``StatementWalker``'s, because the tree can nest
/// thousands of levels. Each comparison looks into its two sides through value-preserving wrappers
/// only (casts, function arguments, lists, arithmetic, `COALESCE`, `CASE` results), at most
/// ``depthLimit`` wrappers deep: a node is then examined by at most that many enclosing
/// comparisons, so `1+1+…+1` costs linear time, not quadratic, while a flat `IN (…)` list of any
/// length is examined whole.
final class LiteralUseFinder {
    /// How many wrappers deep a side of a comparison, or an assigned value, is examined.
    static let depthLimit = 32

    /// Tables visible to a part of a statement: its FROM clause (or UPDATE/DELETE/INSERT/MERGE
    /// target), linked to the enclosing statement's scope.
    struct Scope {
        /// Qualifier (alias, table name) → the table as written; nil for a subquery, function or CTE.
        var tables: [String: String?] = [:]
        var sources = 0
        var single: String?
        var parent: Int32
    }

    private struct Item {
        var entry: Int32
        var scope: Int32
    }

    /// A side's column references and values (`A_Const` or `ParamRef` nodes).
    struct Side {
        var columns: [Int32] = []
        var values: [(node: Int32, isParameter: Bool)] = []
    }

    let tape: JSONTape
    let lexer: SQLLexer
    private var stack: [Item] = []
    var scopes: [Scope] = []
    private var ctes: Set<String> = []
    private(set) var statement: Range<Int> = 0..<0
    private var found: [(position: Int, use: LiteralUse)] = []

    private init(tape: JSONTape, lexer: SQLLexer) {
        self.tape = tape
        self.lexer = lexer
    }

    /// The uses in `sql`, in text order, de-duplicated; [] when it does not parse.
    static func uses(in sql: String) -> [LiteralUse] {
        let lexer = SQLLexer(sql)
        let result: [LiteralUse]? = sql.withCString { cString in
            PgQuery.withParseTree(cString) { json in
                guard let tape = JSONTape(json), let statements = tape.member(0, "stmts") else { return [] }
                let finder = LiteralUseFinder(tape: tape, lexer: lexer)
                tape.forEachChild(statements) { raw in
                    guard let node = tape.member(raw, "stmt") else { return }
                    let start = min(max(tape.int(raw, "stmt_location"), 0), lexer.bytes.count)
                    let length = tape.int(raw, "stmt_len")
                    finder.walk(node, statement: start..<(length > 0 ? min(start + length, lexer.bytes.count) : lexer.bytes.count))
                }
                return finder.overflowed ? finder.everyLiteral() : finder.sortedUses()
            }
        }
        return result ?? []
    }

    /// Past this many uses a statement is too complex to follow: nested comparisons of long
    /// expressions pair every value with every column (a 9 KB statement found by fuzzing held an
    /// event loop for 3 s). Its literals and parameters are then all ``LiteralUse/Role/unknown``.
    static let useLimit = 20_000
    private(set) var overflowed = false

    /// Every literal and parameter of the statement, as a use of an unknown column.
    private func everyLiteral() -> [LiteralUse] {
        var uses: [LiteralUse] = []
        var index = 0
        while true {
            let token = lexer.token(at: index)
            switch token.kind {
            case .end: return uses
            case .string, .number: uses.append(LiteralUse(range: token.range, role: .unknown))
            case .parameter:
                let digits = lexer.bytes[(token.range.lowerBound + 1)..<token.range.upperBound]
                if let number = Int(String(decoding: digits, as: UTF8.self)), number > 0 { uses.append(LiteralUse(parameter: number, role: .unknown)) }
            default: break
            }
            index = max(token.range.upperBound, index + 1)
        }
    }

    private func sortedUses() -> [LiteralUse] {
        let ordered = found.enumerated().sorted { ($0.element.position, $0.offset) < ($1.element.position, $1.offset) }
        var seen = Set<LiteralUse>()
        return ordered.compactMap { seen.insert($0.element.use).inserted ? $0.element.use : nil }
    }

    // MARK: Walk

    private func walk(_ node: Int32, statement range: Range<Int>) {
        statement = range
        ctes = []
        stack.append(Item(entry: node, scope: -1))
        while let item = stack.popLast() { visit(item) }
    }

    private func pushChildren(_ container: Int32, _ scope: Int32) {
        tape.forEachChild(container) { child in
            let tag = tape.tag(child)
            if tag == .object || tag == .array { stack.append(Item(entry: child, scope: scope)) }
        }
    }

    private func visit(_ item: Item) {
        guard tape.tag(item.entry) == .object, let node = tape.wrappedMember(item.entry) else {
            pushChildren(item.entry, item.scope)
            return
        }
        var scope = item.scope
        switch tape.key(node) {
        case "A_Const", "ParamRef", "ColumnRef", "String", "TypeName":
            return
        case "SelectStmt":
            noteCTEs(node)
            scope = newScope(parent: scope, sources: [tape.member(node, "fromClause")])
        case "UpdateStmt", "DeleteStmt":
            noteCTEs(node)
            let relation = tape.member(node, "relation")
            scope = newScope(parent: scope, relation: relation, sources: [tape.member(node, "fromClause"), tape.member(node, "usingClause")])
            if let targets = tape.member(node, "targetList") { assign(targets, table: relation.flatMap(tableName)) }
        case "InsertStmt":
            noteCTEs(node)
            scope = insert(node, scope)
        case "MergeStmt":
            noteCTEs(node)
            let relation = tape.member(node, "relation")
            scope = newScope(parent: scope, relation: relation, sources: [tape.member(node, "sourceRelation")])
            merge(node, table: relation.flatMap(tableName))
        case "A_Expr":
            if let left = tape.member(node, "lexpr"), let right = tape.member(node, "rexpr") { compare(left, right, scope) }
        case "FuncCall", "CoalesceExpr", "MinMaxExpr":
            // A column and a constant given to the same function (`starts_with(email, 'bob')`,
            // `coalesce(ssn, '000')`) are compared or substituted there.
            if let args = tape.member(node, "args") {
                let side = collect(args)
                pair(side, side, scope)
            }
        case "CaseExpr":
            caseArms(node, scope)
        case "SubLink":
            subqueryComparison(node, scope)
        case "CreateRoleStmt", "AlterRoleStmt", "CreateUserMappingStmt", "AlterUserMappingStmt", "CreateForeignServerStmt",
            "AlterForeignServerStmt":
            passwords(node)
        case "CreateSubscriptionStmt", "AlterSubscriptionStmt":
            // The connection string may carry `password=…`: the whole literal counts as one.
            if tape.member(node, "conninfo") != nil, let range = lexer.string(afterKeyword: "connection", from: statement.lowerBound, before: statement.upperBound) {
                record(range: range, role: .password)
            }
        default:
            break
        }
        pushChildren(node, scope)
    }

    private func noteCTEs(_ node: Int32) {
        guard let with = tape.member(node, "withClause"), let list = tape.member(with, "ctes") else { return }
        tape.forEachChild(list) { cte in
            if let (type, fields) = tape.wrappedNode(cte), type == "CommonTableExpr", let name = tape.string(fields, "ctename") {
                ctes.insert(name)
            }
        }
    }

    // MARK: Scopes and columns

    /// A scope over an inline RangeVar `relation` (a DML target) and FROM-like lists or nodes.
    func newScope(parent: Int32, relation: Int32? = nil, sources: [Int32?]) -> Int32 {
        var scope = Scope(parent: parent)
        if let relation { addRangeVar(relation, to: &scope) }
        var work = sources.compactMap { $0 }
        while let entry = work.popLast() {
            if tape.tag(entry) == .array {
                tape.forEachChild(entry) { work.append($0) }
                continue
            }
            guard let (type, fields) = tape.wrappedNode(entry) else { continue }
            switch type {
            case "RangeVar":
                addRangeVar(fields, to: &scope)
            case "JoinExpr":
                for side in ["larg", "rarg"] as [StaticString] { if let arg = tape.member(fields, side) { work.append(arg) } }
            default:
                // A subquery, function or the like: a source, but no table of ours.
                if let alias = tape.member(fields, "alias").flatMap({ tape.string($0, "aliasname") }) {
                    scope.tables.updateValue(nil, forKey: alias)
                }
                scope.sources += 1
                scope.single = nil
            }
        }
        if scope.sources != 1 { scope.single = nil }
        scopes.append(scope)
        return Int32(scopes.count - 1)
    }

    private func addRangeVar(_ fields: Int32, to scope: inout Scope) {
        guard let relation = tape.string(fields, "relname"), let written = tableName(fields) else { return }
        // An unqualified name a WITH clause defines is that CTE, not a table.
        let table = written == relation && ctes.contains(relation) ? nil : written
        if let alias = tape.member(fields, "alias").flatMap({ tape.string($0, "aliasname") }) {
            scope.tables.updateValue(table, forKey: alias)
        } else {
            scope.tables.updateValue(table, forKey: relation)
            scope.tables.updateValue(table, forKey: written)
        }
        scope.sources += 1
        scope.single = table
    }

    /// A RangeVar's name as written: `catalog.schema.table`, each part as the parser gives it.
    func tableName(_ fields: Int32) -> String? {
        guard let relation = tape.string(fields, "relname") else { return nil }
        return [tape.string(fields, "catalogname"), tape.string(fields, "schemaname"), relation].compactMap { $0 }.joined(separator: ".")
    }

    /// The role of a ColumnRef: its last field, with the table its qualifier names (an alias
    /// resolved through the enclosing scopes), or the only table of the nearest FROM clause.
    private func role(ofColumn columnRef: Int32, _ scope: Int32) -> LiteralUse.Role? {
        guard let fields = tape.member(columnRef, "fields") else { return nil }
        var parts: [String] = []
        var star = false
        tape.forEachChild(fields) { field in
            if let (type, value) = tape.wrappedNode(field), type == "String", let part = tape.string(value, "sval") {
                parts.append(part)
            } else {
                star = true
            }
        }
        guard !star, let column = parts.popLast() else { return nil }
        var current = scope
        if parts.isEmpty {
            while current >= 0 {
                let candidate = scopes[Int(current)]
                if candidate.sources > 0 { return .column(table: candidate.sources == 1 ? candidate.single : nil, column: column) }
                current = candidate.parent
            }
            return .column(table: nil, column: column)
        }
        let qualifier = parts.joined(separator: ".")
        while current >= 0 {
            if let table = scopes[Int(current)].tables[qualifier] { return .column(table: table, column: column) }
            current = scopes[Int(current)].parent
        }
        return .column(table: qualifier, column: column)
    }

    // MARK: Comparisons

    private func compare(_ left: Int32, _ right: Int32, _ scope: Int32) {
        // (a, b) = ('x', 'y') and (a, b) IN (('x', 'y'), …) pair element by element.
        if let leftRow = rowArguments(left) {
            var rows: [[Int32]] = []
            var others: [Int32] = []
            if let rightRow = rowArguments(right) {
                rows.append(rightRow)
            } else if let (type, list) = tape.wrappedNode(right), type == "List", let items = tape.member(list, "items") {
                tape.forEachChild(items) { item in
                    if let row = rowArguments(item) { rows.append(row) } else { others.append(item) }
                }
            } else {
                others.append(right)
            }
            for row in rows {
                guard row.count == leftRow.count else {
                    others.append(contentsOf: row)
                    continue
                }
                for (a, b) in zip(leftRow, row) { compareSides(collect(a), collect(b), scope) }
            }
            if !others.isEmpty {
                let leftSide = collect(left)
                for other in others { compareSides(leftSide, collect(other), scope) }
            }
            return
        }
        compareSides(collect(left), collect(right), scope)
    }

    private func compareSides(_ left: Side, _ right: Side, _ scope: Int32) {
        pair(left, right, scope)
        pair(right, left, scope)
    }

    private func rowArguments(_ entry: Int32) -> [Int32]? {
        guard let (type, row) = tape.wrappedNode(entry), type == "RowExpr", let args = tape.member(row, "args") else { return nil }
        var items: [Int32] = []
        tape.forEachChild(args) { items.append($0) }
        return items
    }

    /// `x IN (VALUES ('a'), ('b'))`, `x = ANY (SELECT 'a')`: the subquery's own output values (not
    /// those of a FROM or a nested query) are compared with `x`.
    private func subqueryComparison(_ node: Int32, _ scope: Int32) {
        guard let test = tape.member(node, "testexpr"), let select = tape.member(node, "subselect"),
            let (type, query) = tape.wrappedNode(select), type == "SelectStmt"
        else { return }
        let subject = collect(test)
        guard !subject.columns.isEmpty else { return }
        if let rows = tape.member(query, "valuesLists") {
            pair(subject, collect(rows), scope)
        } else if let targets = tape.member(query, "targetList") {
            tape.forEachChild(targets) { target in
                if let (targetType, resTarget) = tape.wrappedNode(target), targetType == "ResTarget", let value = tape.member(resTarget, "val") {
                    pair(subject, collect(value), scope)
                }
            }
        }
    }

    /// Simple `CASE x WHEN 'a' …`: each WHEN value is compared with `x`.
    private func caseArms(_ node: Int32, _ scope: Int32) {
        guard let arg = tape.member(node, "arg"), let arms = tape.member(node, "args") else { return }
        let subject = collect(arg)
        guard !subject.columns.isEmpty else { return }
        tape.forEachChild(arms) { arm in
            if let (type, when) = tape.wrappedNode(arm), type == "CaseWhen", let value = tape.member(when, "expr") {
                pair(subject, collect(value), scope)
            }
        }
    }

    /// Each value of `values` is a use of each column of `columns`.
    private func pair(_ columns: Side, _ values: Side, _ scope: Int32) {
        guard !overflowed, !columns.columns.isEmpty, !values.values.isEmpty else { return }
        var roles: [LiteralUse.Role] = []
        for column in columns.columns {
            if let role = role(ofColumn: column, scope), !roles.contains(role) { roles.append(role) }
        }
        for value in values.values {
            for role in roles { record(value, role) }
        }
    }

    /// The column references and values in `root`, looking only through nodes that pass a value
    /// on (a subquery is not one: it is walked with its own scope).
    func collect(_ root: Int32) -> Side {
        var side = Side()
        var work = [(entry: root, depth: 0)]
        while let (entry, depth) = work.popLast() {
            if tape.tag(entry) == .array {
                tape.forEachChild(entry) { work.append(($0, depth)) }
                continue
            }
            guard tape.tag(entry) == .object, let node = tape.wrappedMember(entry) else { continue }
            // Key comparisons without allocating: this loop runs for every node of every side.
            var inner: (StaticString?, StaticString?) = (nil, nil)
            if tape.keyEquals(node, "ColumnRef") {
                side.columns.append(node)
            } else if tape.keyEquals(node, "A_Const") {
                if !tape.bool(node, "isnull") { side.values.append((node, false)) }
            } else if tape.keyEquals(node, "ParamRef") {
                side.values.append((node, true))
            } else if tape.keyEquals(node, "A_Expr") {
                inner = ("lexpr", "rexpr")
            } else if tape.keyEquals(node, "TypeCast") || tape.keyEquals(node, "CollateClause") || tape.keyEquals(node, "A_Indirection")
                || tape.keyEquals(node, "NamedArgExpr")
            {
                inner = ("arg", nil)
            } else if tape.keyEquals(node, "FuncCall") || tape.keyEquals(node, "CoalesceExpr") || tape.keyEquals(node, "MinMaxExpr")
                || tape.keyEquals(node, "RowExpr")
            {
                inner = ("args", nil)
            } else if tape.keyEquals(node, "List") {
                inner = ("items", nil)
            } else if tape.keyEquals(node, "A_ArrayExpr") {
                inner = ("elements", nil)
            } else if tape.keyEquals(node, "CaseExpr") {
                inner = ("args", "defresult")
            } else if tape.keyEquals(node, "CaseWhen") {
                inner = ("result", nil)
            }
            guard depth < Self.depthLimit else { continue }
            if let field = inner.0, let child = tape.member(node, field) { work.append((child, depth + 1)) }
            if let field = inner.1, let child = tape.member(node, field) { work.append((child, depth + 1)) }
        }
        return side
    }

    // MARK: Recording

    func record(_ value: (node: Int32, isParameter: Bool), _ role: LiteralUse.Role) {
        guard found.count < Self.useLimit else { return overflowed = true }
        let location = tape.int(value.node, "location")
        if value.isParameter {
            let number = tape.int(value.node, "number")
            guard number > 0 else { return }
            found.append((location, LiteralUse(parameter: number, role: role)))
        } else if let range = lexer.literalRange(at: location) {
            found.append((location, LiteralUse(range: range, role: role)))
        }
    }

    func record(range: Range<Int>, role: LiteralUse.Role) {
        guard found.count < Self.useLimit else { return overflowed = true }
        found.append((range.lowerBound, LiteralUse(range: range, role: role)))
    }
}
