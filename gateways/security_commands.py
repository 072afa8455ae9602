"""Security sub-commands of ``twin``: users (add, list, disable), audit (verify, show, export) and certs
(show, list, trust, revoke: the server certificate and the client trust list, gateways.certs).

Files default under the runtime's ``data_dir`` (``var/users.json``, ``var/audit.sqlite``; ``--config``
takes data_dir from a runtime TOML) and are overridden with ``--users FILE`` / ``--audit FILE``. Every user
change, and every refused one, is appended to the audit trail as ``user_change`` by the operating-system
account that ran the command (role ``local``: the command acts with that account's file permissions, not
as a twin user). Refusals raise TwinError, which the CLI ends as ``twin <cmd>: error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

USERS_FILE = "users.json"
AUDIT_FILE = "audit.sqlite"
LOCAL_ROLE = "local"


def _data_dir(args: argparse.Namespace) -> Path:
    if args.config is None:
        from gateways.config import RuntimeConfig

        return Path(RuntimeConfig.__dataclass_fields__["data_dir"].default)
    from gateways.config import load_runtime_config

    return Path(load_runtime_config(args.config).data_dir)


def _users_path(args: argparse.Namespace) -> Path:
    return Path(args.users) if args.users else _data_dir(args) / USERS_FILE


def _audit_path(args: argparse.Namespace) -> Path:
    return Path(args.audit) if args.audit else _data_dir(args) / AUDIT_FILE


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown-os-user"


def _read_password(args: argparse.Namespace) -> str:
    from twin_core.errors import ParameterError

    if args.password_stdin:
        line = sys.stdin.readline()
        # Only the line's end is the terminator: spaces are part of the password.
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise ParameterError("password", None, "no terminal to prompt on: pass --password-stdin")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ParameterError("password", None, "the two entries differ")
    return first


def _audited_change(args: argparse.Namespace, target: str, change, describe,  # noqa: ANN001
                    action: str = "user_change") -> object:
    """Run ``change()`` and append its record (success, or the refusal and why, then re-raise)."""
    from gateways.audit import AuditTrail
    from twin_core.errors import TwinError

    # Opened first: a change that could not be audited is not made.
    with AuditTrail(_audit_path(args)) as trail:
        common = {"user": _os_user(), "role": LOCAL_ROLE, "action": action, "target": target,
                  "reason": args.reason}
        try:
            before, after = change()
        except TwinError as exc:
            trail.append(**common, outcome="refused", new_value=describe(args), detail=str(exc))
            raise
        command = f"twin users {args.users_cmd}" if action == "user_change" else f"twin certs {args.certs_cmd}"
        trail.append(**common, outcome="success", old_value=before, new_value=after, detail=command)
    return after


def cmd_users_add(args: argparse.Namespace) -> int:
    from gateways.users import UserStore

    store = UserStore(_users_path(args))

    def change() -> tuple[str, str]:
        from twin_core.errors import ParameterError

        # Refused before the prompt: nobody should type a password for a change that cannot be made.
        if store.get(args.name) is not None:
            raise ParameterError("name", args.name, "already exists")
        u = store.add(args.name, args.role, _read_password(args))
        return "", f"role={u.role} enabled=true"

    _audited_change(args, f"user:{args.name}", change, lambda a: f"role={a.role} enabled=true")
    print(f"added user {args.name} ({args.role}) to {store.path}")
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    from gateways.users import UserStore

    store = UserStore(_users_path(args))

    def change() -> tuple[str, str]:
        u = store.disable(args.name)
        return f"role={u.role} enabled=true", f"role={u.role} enabled=false"

    _audited_change(args, f"user:{args.name}", change, lambda a: "enabled=false")
    print(f"disabled user {args.name} in {store.path}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from gateways.users import UserStore

    users = UserStore(_users_path(args)).list()
    if not users:
        print(f"no users in {_users_path(args)}")
        return 0
    w = max(4, *(len(u.name) for u in users))
    print(f"{'name':<{w}}  {'role':<8}  {'state':<8}  {'created':<27}  changed")
    for u in users:
        print(f"{u.name:<{w}}  {str(u.role):<8}  {'enabled' if u.enabled else 'disabled':<8}  {u.created:<27}  {u.changed}")
    return 0


def _open_existing(args: argparse.Namespace):  # noqa: ANN202
    from gateways.audit import AuditTrail

    return AuditTrail(_audit_path(args), create=False)


def _anchor(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or int(seq) < 1 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError(f"{text!r} is not SEQ:HASH (a record number and a 64-digit lowercase "
                                         "hex hash, as twin audit verify prints them)")
    return int(seq), digest


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateways.audit import AuditError

    with _open_existing(args) as trail:
        result = trail.verify(anchor=args.anchor)
    if not result.triggers_present:
        print(f"warning: {trail.path}: the append-only triggers are missing (dropped by someone with write "
              "access to the file)", file=sys.stderr)
    if result.broken is not None:
        raise AuditError(f"{trail.path}: verification failed at {result.broken}")
    print(f"{trail.path}: {result.records} records verified; head {result.head_seq}:{result.head_hash}")
    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    with _open_existing(args) as trail:
        records = trail.show(since=args.since, user=args.user)
    for r in records:
        change = f" {r.old_value!r} -> {r.new_value!r}" if (r.old_value or r.new_value) else ""
        extra = "".join(f" {k}={v!r}" for k, v in (("reason", r.reason), ("detail", r.detail),
                                                     ("cert", r.cert_thumbprint)) if v)
        print(f"{r.seq:>6} {r.ts} {r.user} ({r.role or '-'}) {r.action} {r.target}{change} {r.outcome}{extra}")
    print(f"{len(records)} records", file=sys.stderr)
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    with _open_existing(args) as trail:
        n = trail.export_csv(args.out)
    print(f"wrote {n} records to {args.out}")
    return 0


def _pki(args: argparse.Namespace):  # noqa: ANN202
    from gateways.certs import Pki

    return Pki(_data_dir(args))


def cmd_certs_show(args: argparse.Namespace) -> int:
    from gateways.certs import CertificateError, CertInfo, load_certificate_file

    pki = _pki(args)
    if not pki.cert_path.exists():
        raise CertificateError(f"{pki.cert_path}: no server certificate yet (the OPC UA server generates it at its "
                               "first start)")
    info = CertInfo.of(load_certificate_file(pki.cert_path), "server", pki.cert_path)
    print(f"server certificate {info.path}\n  subject          {info.subject}\n  application URI  "
          f"{info.application_uri}\n  thumbprint       {info.thumbprint} (SHA-1)\n  valid            "
          f"{info.not_before:%Y-%m-%d %H:%M}Z to {info.not_after:%Y-%m-%d %H:%M}Z\n  key              {pki.key_path}")
    return 0


def cmd_certs_list(args: argparse.Namespace) -> int:
    from gateways.certs import TrustList

    pki = _pki(args)
    infos = TrustList(pki).list()
    if not infos:
        print(f"no client certificates in {pki.trusted} or {pki.revoked}")
        return 0
    print(f"{'thumbprint (SHA-1)':<40}  {'state':<7}  {'expires':<10}  subject  application URI")
    for info in infos:
        print(info.line())
    return 0


def cmd_certs_trust(args: argparse.Namespace) -> int:
    from gateways.certs import CertificateError, TrustList, load_certificate_file, thumbprint

    trust = TrustList(_pki(args))
    try:
        tp = thumbprint(load_certificate_file(args.path))
    except CertificateError:
        tp = ""

    def change() -> tuple[str, str]:
        info = trust.trust(args.path)
        return "", f"trusted {info.subject} ({info.application_uri})"

    _audited_change(args, f"certificate:{tp or args.path}", change, lambda a: f"trust {a.path}",
                    action="certificate_change")
    print(f"trusted {tp} from {args.path} (copied to {trust.pki.trusted})")
    return 0


def cmd_certs_revoke(args: argparse.Namespace) -> int:
    from gateways.certs import TrustList

    trust = TrustList(_pki(args))
    tp = args.thumbprint.strip().lower().replace(":", "")

    def change() -> tuple[str, str]:
        info = trust.revoke(args.thumbprint)
        return "trusted", f"revoked {info.subject} ({info.application_uri})"

    _audited_change(args, f"certificate:{tp}", change, lambda a: "revoked", action="certificate_change")
    print(f"revoked {tp}: the servers refuse it from the client's next connection on")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from gateways.users import Role

    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--config", help="runtime TOML whose data_dir holds the files (default: var)")
    files.add_argument("--users", help=f"user file (default: <data_dir>/{USERS_FILE})")
    files.add_argument("--audit", help=f"audit trail (default: <data_dir>/{AUDIT_FILE})")

    u = sub.add_parser("users", help="the users of the OPC UA server: add, list, disable (changes are audited)")
    usub = u.add_subparsers(dest="users_cmd", metavar="ACTION", required=True)
    a = usub.add_parser("add", parents=[files], help="add a user (password from a prompt or --password-stdin)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=[str(r) for r in Role])
    a.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    a.add_argument("--reason", default="", help="why (stored in the audit record)")
    a.set_defaults(func=cmd_users_add)
    li = usub.add_parser("list", parents=[files], help="list users, roles and whether they are enabled")
    li.set_defaults(func=cmd_users_list)
    d = usub.add_parser("disable", parents=[files], help="disable a user: it can no longer log in")
    d.add_argument("name")
    d.add_argument("--reason", default="", help="why (stored in the audit record)")
    d.set_defaults(func=cmd_users_disable)

    au = sub.add_parser("audit", help="the audit trail: verify the hash chain, show records, export CSV")
    asub = au.add_subparsers(dest="audit_cmd", metavar="ACTION", required=True)
    v = asub.add_parser("verify", parents=[files], help="check the hash chain; names the first broken record")
    v.add_argument("--anchor", type=_anchor, help="SEQ:HASH of a head recorded earlier: must still be there")
    v.set_defaults(func=cmd_audit_verify)
    s = asub.add_parser("show", parents=[files], help="print records (UTC)")
    s.add_argument("--since", help="only records at or after this ISO 8601 time (naive = UTC)")
    s.add_argument("--user", help="only records of this user")
    s.set_defaults(func=cmd_audit_show)
    e = asub.add_parser("export", parents=[files], help="write every record, every field, to CSV")
    e.add_argument("out")
    e.set_defaults(func=cmd_audit_export)

    c = sub.add_parser("certs", help="the server certificate and the client trust list: show, list, trust, revoke "
                                     "(changes are audited)")
    csub = c.add_subparsers(dest="certs_cmd", metavar="ACTION", required=True)
    sh = csub.add_parser("show", parents=[files], help="the server's certificate: subject, URI, thumbprint, validity")
    sh.set_defaults(func=cmd_certs_show)
    cl = csub.add_parser("list", parents=[files], help="trusted and revoked client certificates")
    cl.set_defaults(func=cmd_certs_list)
    ct = csub.add_parser("trust", parents=[files], help="put a client certificate (PEM or DER file) on the trust list")
    ct.add_argument("path")
    ct.add_argument("--reason", default="", help="why (stored in the audit record)")
    ct.set_defaults(func=cmd_certs_trust)
    cr = csub.add_parser("revoke", parents=[files], help="take a certificate off the trust list, for good")
    cr.add_argument("thumbprint", help="its SHA-1 thumbprint, as twin certs list prints it")
    cr.add_argument("--reason", default="", help="why (stored in the audit record)")
    cr.set_defaults(func=cmd_certs_revoke)
