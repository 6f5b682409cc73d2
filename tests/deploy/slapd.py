"""A real OpenLDAP server for the tests: Debian's slapd on a loopback port, run from a temp
directory with its own slapd.conf and an mdb database loaded by slapadd. Nothing is mocked:
pploy talks LDAP to it over TCP, and a test may stop it to play a directory that went down."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from tests.helpers import free_port, require_binary, wait_port

SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "s3cret-bind-password"
# A service account as sites give pploy: read access, 500 entries a search, any number paged.
READER_DN = f"cn=reader,{SUFFIX}"
READER_PASSWORD = "reader-password"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"

CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {root}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "{rootdn}"
rootpw {rootpw}
directory {root}/db
limits dn.exact="{reader}" size.soft=500 size.hard=500 size.prtotal=unlimited
"""


def person(cn: str, mail: str | None = None) -> str:
    """An inetOrgPerson; a cn with a control character goes base64 (``cn::``) under a uid RDN."""
    if cn.isprintable():
        mail_line = f"mail: {mail}\n" if mail else ""
        return (
            f"dn: cn={cn},{PEOPLE}\nobjectClass: inetOrgPerson\ncn: {cn}\nsn: Person\n{mail_line}"
        )
    encoded = base64.b64encode(cn.encode()).decode()
    return (
        f"dn: uid=odd,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: odd\ncn:: {encoded}\nsn: Person\n"
    )


def group(cn: str, members: list[str]) -> str:
    lines = "".join(f"member: cn={m},{PEOPLE}\n" for m in members)
    return f"dn: cn={cn},{GROUPS}\nobjectClass: groupOfNames\ncn: {cn}\n{lines}"


# The directory every test reads: carol and dave are its deployers (alice is also a static
# user), one entry's cn holds a control character, and two groups name people by DN (with
# the odd spacing and case real directories have).
LDIF = "\n".join(
    [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
        "o: Example\ndc: example\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: reader\nuserPassword: {READER_PASSWORD}\n",
        person("carol", "carol@example.com"),
        person("dave", "Dave@Example.com"),
        person("alice"),
        person("eve\x07bell"),
        group("deployers", ["carol", "dave"]),
        f"dn: cn=admins,{GROUPS}\nobjectClass: groupOfNames\ncn: admins\n"
        f"member: CN=Dave, OU=People,DC=example,DC=com\n",
    ]
)


class Slapd:
    """One slapd, owned by the test process, in the foreground (``-d 0``) on a loopback port."""

    def __init__(
        self, root: Path, port: int | None = None, tls: bool = False, crowd: int = 0
    ) -> None:
        """``crowd``: that many more people (``p0000``…), to pass slapd's 500-entry limit."""
        self.binary = require_binary("slapd")
        require_binary("slapadd")
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "db").mkdir(exist_ok=True)
        self.conf = root / "slapd.conf"
        conf = CONF.format(
            root=root, suffix=SUFFIX, rootdn=ROOT_DN, rootpw=ROOT_PASSWORD, reader=READER_DN
        )
        self.ca_file: Path | None = None
        if tls:  # a certificate for 127.0.0.1 from a test CA (trustme), for StartTLS
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            self.ca_file = root / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
            cert.private_key_pem.write_to_path(str(root / "key.pem"))
            conf = (
                f"TLSCertificateFile {root}/cert.pem\nTLSCertificateKeyFile {root}/key.pem\n" + conf
            )
        self.conf.write_text(conf)
        extra = "".join("\n" + person(f"p{i:04d}") for i in range(crowd))
        (root / "people.ldif").write_text(LDIF + extra)
        subprocess.run(
            ["slapadd", "-q", "-f", str(self.conf), "-l", str(root / "people.ldif")],
            check=True, capture_output=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 15) -> None:
        log = open(self.root / "slapd.log", "wb")  # noqa: SIM115 - slapd's for its lifetime
        self.proc = subprocess.Popen(
            [self.binary, "-f", str(self.conf), "-h", self.url, "-d", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_port(self.port, self.proc, self.root / "slapd.log", timeout)

    def stop(self) -> None:
        """Kill it (SIGKILL: a directory that vanishes, not one that says goodbye)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
