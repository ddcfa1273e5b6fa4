"""Configuration files: relative paths, typos, wrong types and missing keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.config import AgentConfig, RelayConfig, TetherSettings, VendorConfig, toml_string
from tether.errors import ConfigError
from tether.keys import SigningKey

# Fixed keys: they appear in test ids, which must be the same in every test process.
VENDOR_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(b"v" * 32)).verify_key().to_paserk()
SECOND_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(b"s" * 32)).verify_key().to_paserk()


def write(tmp_path: Path, text: str, name: str = "part.toml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def agent_toml(extra: str = "", serial: str = "SN-1001") -> str:
    return f'serial = "{serial}"\nvendor_keys = ["{VENDOR_KEY}"]\n{extra}'


def relay_toml(extra: str = "") -> str:
    return (
        'host_key = "relay_host_key"\n'
        'database = "sqlite:///relay.db"\n'
        f'vendor_keys = ["{VENDOR_KEY}"]\n'
        'engineer_ca = "ca.pub"\n'
        f"{extra}"
    )


def vendor_toml(extra: str = "") -> str:
    return (
        'vendor = "Acme"\ndatabase = "sqlite:///vendor.db"\nrelay = "relay.example.com:2222"\n'
        + extra
    )


# --- agent --------------------------------------------------------------------------


def test_agent_minimal_file_gets_the_defaults(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, agent_toml()))

    assert config.serial == "SN-1001"
    assert [k.to_paserk() for k in config.vendor_keys] == [VENDOR_KEY]
    assert config.state_dir == Path("/var/lib/tether")
    assert config.run_dir == Path("/run/tether")
    assert config.machine_key_path == Path("/var/lib/tether/machine_key")
    assert config.support_account == "tether-support"
    assert config.allowed_ports == (22, 80, 443)
    assert config.tether == TetherSettings()
    assert config.path == (tmp_path / "etc" / "part.toml").resolve()


def test_agent_relative_paths_resolve_against_the_files_directory(tmp_path: Path) -> None:
    path = write(tmp_path, agent_toml('state_dir = "state"\nrun_dir = "../run/tether"\n'))

    config = AgentConfig.load(path)

    assert config.state_dir == (tmp_path / "etc" / "state").resolve()
    assert config.run_dir == (tmp_path / "run" / "tether").resolve()
    assert config.machine_key_path == (tmp_path / "etc" / "state" / "machine_key").resolve()


def test_relative_paths_do_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, agent_toml('state_dir = "state"\n'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert AgentConfig.load(Path("../etc/part.toml")).state_dir == path.parent.resolve() / "state"


def test_agent_absolute_paths_are_kept(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, agent_toml('state_dir = "/srv/tether"\n')))

    assert config.state_dir == Path("/srv/tether")


def test_agent_extra_ports_extend_the_allowed_ports(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, agent_toml("extra_ports = [5432, 25, 443]\n")))

    assert config.extra_ports == (25, 443, 5432)
    assert config.allowed_ports == (22, 25, 80, 443, 5432)


def test_agent_empty_extra_ports_is_fine(tmp_path: Path) -> None:
    config = AgentConfig.load(write(tmp_path, agent_toml("extra_ports = []\n")))

    assert config.allowed_ports == (22, 80, 443)


def test_agent_tether_table(tmp_path: Path) -> None:
    text = agent_toml(
        "[tether]\nkeepalive_interval = 5\nbackoff_cap = 30.5\nkeepalive_count_max = 4\n"
    )

    config = AgentConfig.load(write(tmp_path, text))

    assert config.tether.keepalive_interval == 5.0
    assert config.tether.backoff_cap == 30.5
    assert config.tether.keepalive_count_max == 4
    assert config.tether.backoff_initial == 1.0


def test_agent_several_vendor_keys(tmp_path: Path) -> None:
    text = f'serial = "S1"\nvendor_keys = ["{VENDOR_KEY}", "{SECOND_KEY}"]\n'

    config = AgentConfig.load(write(tmp_path, text))

    assert [k.to_paserk() for k in config.vendor_keys] == [VENDOR_KEY, SECOND_KEY]


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ('serail = "x"\n', "serail"),
        ('state_dri = "x"\nrun_dri = "y"\n', "run_dri, state_dri"),
        ("extra_port = [25]\n", "extra_port"),
    ],
)
def test_agent_unknown_keys_are_refused_by_name(tmp_path: Path, extra: str, names: str) -> None:
    path = write(tmp_path, agent_toml(extra))

    with pytest.raises(ConfigError) as info:
        AgentConfig.load(path)

    assert str(path.resolve()) in str(info.value)
    assert f"unknown setting(s) {names}" in str(info.value)


def test_agent_unknown_key_in_a_table_names_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, agent_toml("[tether]\nbackof_cap = 10\n"))

    with pytest.raises(ConfigError, match=r"unknown setting\(s\) backof_cap in \[tether\]"):
        AgentConfig.load(path)


@pytest.mark.parametrize(
    ("text", "where", "type_name"),
    [
        ('serial = 1001\nvendor_keys = ["k"]\n', "serial", "int"),
        (agent_toml('state_dir = ["a"]\n'), "state_dir", "list"),
        (agent_toml("extra_ports = 5432\n"), "extra_ports", "int"),
        (agent_toml("support_account = false\n"), "support_account", "bool"),
        (agent_toml("tether = 5\n"), "tether", "int"),
        (agent_toml('[tether]\nbackoff_cap = "60"\n'), "tether.backoff_cap", "str"),
        (agent_toml("[tether]\nkeepalive_interval = true\n"), "tether.keepalive_interval", "bool"),
        (
            agent_toml("[tether]\nkeepalive_count_max = 3.5\n"),
            "tether.keepalive_count_max",
            "float",
        ),
        (f'serial = "S"\nvendor_keys = "{VENDOR_KEY}"\n', "vendor_keys", "str"),
    ],
)
def test_agent_wrong_types_are_refused_naming_file_key_and_type(
    tmp_path: Path, text: str, where: str, type_name: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        AgentConfig.load(path)

    assert f"{path.resolve()}: {where} has the wrong type ({type_name})" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (agent_toml("extra_ports = [0]\n"), "extra_ports: invalid port 0"),
        (agent_toml("extra_ports = [70000]\n"), "extra_ports: invalid port 70000"),
        (agent_toml('extra_ports = ["5432"]\n'), "extra_ports"),
        (agent_toml('extra_ports = [5432, "25"]\n'), "extra_ports"),
        (agent_toml(f"extra_ports = {list(range(2000, 2017))}\n"), "at most 16 ports"),
        (
            agent_toml("[tether]\nkeepalive_count_max = 0\n"),
            "keepalive_count_max must be between 1 and 100",
        ),
        ('serial = "S"\nvendor_keys = []\n', "vendor_keys needs at least one"),
        ('serial = "S"\nvendor_keys = [1]\n', "vendor_keys must be a list of strings"),
        (
            'serial = "S"\nvendor_keys = ["k4.secret.AAAA"]\n',
            "vendor_keys: vendor public key must start",
        ),
        (
            'serial = "S"\nvendor_keys = ["k4.public.AAAA"]\n',
            "vendor_keys: vendor public key is damaged",
        ),
    ],
)
def test_agent_bad_values_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        AgentConfig.load(path)

    assert str(path.parent.resolve()) in str(info.value)


@pytest.mark.parametrize(
    ("text", "missing"),
    [(f'vendor_keys = ["{VENDOR_KEY}"]\n', "serial"), ('serial = "S1"\n', "vendor_keys")],
)
def test_agent_missing_required_keys_are_refused(tmp_path: Path, text: str, missing: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        AgentConfig.load(path)

    assert str(info.value) == f"{path.resolve()}: {missing} is missing"


@pytest.mark.parametrize("serial", ["a b", "", "-x", "x;rm", "x" * 65])
def test_agent_bad_serial_is_refused(tmp_path: Path, serial: str) -> None:
    path = write(tmp_path, agent_toml(serial=serial))

    with pytest.raises(ConfigError, match="serial: invalid serial") as info:
        AgentConfig.load(path)

    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "setting",
    [
        "backoff_cap = -5",
        "backoff_cap = 0",
        "backoff_initial = -1",
        "keepalive_interval = -1",
        "connect_timeout = 0",
        "backoff_cap = nan",
        "backoff_cap = inf",
    ],
)
def test_agent_nonsensical_timings_are_refused(tmp_path: Path, setting: str) -> None:
    path = write(tmp_path, agent_toml(f"[tether]\n{setting}\n"))

    with pytest.raises(ConfigError):
        AgentConfig.load(path)


def test_a_file_that_does_not_exist_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "agent.toml"

    for load in (AgentConfig.load, RelayConfig.load, VendorConfig.load):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert str(info.value) == f"configuration file {path} does not exist"


@pytest.mark.parametrize("text", ['serial = "S1\n', "serial = S1\n", "[tether\n", "a = 1\na = 2\n"])
def test_invalid_toml_names_the_path(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        AgentConfig.load(path)

    assert str(info.value).startswith(f"{path} is not valid TOML: ")
    assert "line" in str(info.value)


# --- relay --------------------------------------------------------------------------


def test_relay_minimal_file(tmp_path: Path) -> None:
    config = RelayConfig.load(write(tmp_path, relay_toml()))

    etc = (tmp_path / "etc").resolve()
    assert config.host_key == etc / "relay_host_key"
    assert config.engineer_ca == etc / "ca.pub"
    assert config.database == "sqlite:///relay.db"
    assert config.listen == ("0.0.0.0", 2222)
    assert config.relay_id == "relay-1"
    assert config.poll_interval == 0.25
    assert [k.to_paserk() for k in config.vendor_keys] == [VENDOR_KEY]


def test_relay_listen_address_ipv6(tmp_path: Path) -> None:
    config = RelayConfig.load(
        write(tmp_path, relay_toml('listen = "[::]:443"\nmax_unauthenticated = 50\n'))
    )

    assert config.listen == ("::", 443)
    assert config.max_unauthenticated == 50
    assert config.early_drop_start == 12  # a quarter of the cap unless set


def test_relay_flood_limits(tmp_path: Path) -> None:
    default = RelayConfig.load(write(tmp_path, relay_toml()))
    assert (default.max_unauthenticated, default.early_drop_start) == (400, 100)
    assert (default.login_timeout, default.login_timeout_busy) == (30.0, 5.0)
    assert (default.netblock_ipv4, default.netblock_ipv6) == (24, 64)
    config = RelayConfig.load(
        write(
            tmp_path,
            relay_toml(
                "early_drop_start = 10\nearly_drop_rate = 50\nnetblock_ipv6 = 48\n"
                "penalty_max = 60\nmax_channels_per_engineer = 4\nrequest_timeout = 600\n"
            ),
        )
    )
    assert config.early_drop_start == 10
    assert config.early_drop_rate == 50
    assert config.netblock_ipv6 == 48
    assert config.penalty_max == 60.0
    assert config.max_channels_per_engineer == 4
    assert config.request_timeout == 600.0


def test_relay_behind_a_load_balancer(tmp_path: Path) -> None:
    config = RelayConfig.load(
        write(
            tmp_path,
            relay_toml(
                'proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]\n'
                '[metrics]\nlisten = "127.0.0.1:0"\n'
            ),
        )
    )

    assert config.proxy_protocol is True
    assert config.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8")
    assert config.metrics_listen == ("127.0.0.1", 0)
    assert RelayConfig.load(write(tmp_path, relay_toml())).metrics_listen is None


def test_agent_metrics_textfile_must_be_a_prom_file(tmp_path: Path) -> None:
    text = agent_toml('[metrics]\ntextfile = "node/tether.prom"\n')
    written = write(tmp_path, text, "agent.toml")
    config = AgentConfig.load(written)
    assert config.metrics_textfile == written.parent / "node" / "tether.prom"  # beside it
    assert AgentConfig.load(write(tmp_path, agent_toml(), "agent.toml")).metrics_textfile is None
    with pytest.raises(ConfigError, match=r"metrics.textfile must end in .prom"):
        AgentConfig.load(
            write(tmp_path, agent_toml('[metrics]\ntextfile = "tether.txt"\n'), "agent.toml")
        )


def test_vendor_metrics_listen_is_read_from_its_table(tmp_path: Path) -> None:
    text = vendor_toml('[metrics]\nlisten = "10.0.0.4:9103"\n')
    config = VendorConfig.load(write(tmp_path, text, "vendor.toml"))
    assert config.metrics_listen == ("10.0.0.4", 9103)
    plain = VendorConfig.load(write(tmp_path, vendor_toml(), "vendor.toml"))
    assert plain.metrics_listen is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('listen = "0.0.0.0"\n', "listen: invalid listen address"),
        ('listen = "0.0.0.0:0"\n', "listen: invalid listen address"),
        ("max_unauthenticated = 0\n", "max_unauthenticated must be between 1 and 100000"),
        ('login_timeout = "30"\n', "login_timeout has the wrong type"),
        ('relay_idd = "r2"\n', r"unknown setting\(s\) relay_idd"),
        ("proxy_protocol = true\n", "proxy_protocol = true needs trusted_proxies"),
        ('proxy_protocol = "yes"\n', "proxy_protocol has the wrong type"),
        ('trusted_proxies = ["10.0.0.300/32"]\n', "trusted_proxies: "),
        ("early_drop_start = 500\n", "early_drop_start \\(500\\) must be at most"),
        ("early_drop_rate = 101\n", "early_drop_rate must be between 0 and 100"),
        ("login_timeout_busy = 60\n", "login_timeout_busy .* must be at most login_timeout"),
        ("penalty_min = 700\n", "penalty_min .* must be at most penalty_max"),
        ("netblock_ipv4 = 33\n", "netblock_ipv4 must be between 8 and 32"),
        ('[metrics]\nlisten = "127.0.0.1"\n', "metrics.listen: invalid metrics address"),
        (
            '[metrics]\nlisten = "127.0.0.1:9102"\npath = "/x"\n',
            r"unknown setting\(s\) path in \[metrics\]",
        ),
        ('health_listen = "127.0.0.1:8081"\n', r"unknown setting\(s\) health_listen"),
    ],
)
def test_relay_bad_values_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayConfig.load(write(tmp_path, relay_toml(extra)))


@pytest.mark.parametrize("missing", ["host_key", "database", "vendor_keys", "engineer_ca"])
def test_relay_missing_required_keys_are_refused(tmp_path: Path, missing: str) -> None:
    text = "\n".join(line for line in relay_toml().splitlines() if not line.startswith(missing))
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        RelayConfig.load(path)

    assert str(info.value) == f"{path.resolve()}: {missing} is missing"


# --- vendor -------------------------------------------------------------------------


def test_vendor_minimal_file_keeps_its_data_next_to_it(tmp_path: Path) -> None:
    config = VendorConfig.load(write(tmp_path, vendor_toml(), "vendor.toml"))

    etc = (tmp_path / "etc").resolve()
    assert config.data_dir == etc
    assert config.signing_key_path == etc / "tether_signing_key.pem"
    assert config.engineer_ca_path == etc / "engineer_ca"
    assert config.relay_host_key_path == etc / "relay_host_key"
    assert config.default_ports == (22, 80, 443)
    assert config.vendor == "Acme"
    assert config.relay == "relay.example.com:2222"


def test_vendor_data_dir_and_ports(tmp_path: Path) -> None:
    text = vendor_toml('data_dir = "data"\ndefault_ports = [443, 22]\n')

    config = VendorConfig.load(write(tmp_path, text, "vendor.toml"))

    assert config.data_dir == (tmp_path / "etc" / "data").resolve()
    assert config.default_ports == (22, 443)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (vendor_toml("default_ports = [0]\n"), "default_ports: invalid port 0"),
        (vendor_toml("default_ports = []\n"), "default_ports: at least one port"),
        (vendor_toml('default_ports = "22"\n'), "default_ports has the wrong type"),
        (vendor_toml('relais = "x:1"\n'), r"unknown setting\(s\) relais"),
        (
            vendor_toml().replace("relay.example.com:2222", "relay.example.com"),
            "relay: invalid relay address",
        ),
        ('database = "d"\nrelay = "r:1"\n', "vendor is missing"),
        ('vendor = "A"\nrelay = "r:1"\n', "database is missing"),
        ('vendor = "A"\ndatabase = "d"\n', "relay is missing"),
    ],
)
def test_vendor_bad_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VendorConfig.load(write(tmp_path, text, "vendor.toml"))


# --- quoting ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["plain", 'say "hi"', "C:\\dir\\file", 'back\\"slash'])
def test_toml_string_round_trips(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, agent_toml(f"support_account = {toml_string(value)}\n"))

    assert AgentConfig.load(path).support_account == value


@pytest.mark.parametrize("value", ["Acme\nInc", "bell\x07"])
def test_toml_string_round_trips_control_characters(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, agent_toml(f"support_account = {toml_string(value)}\n"))

    assert AgentConfig.load(path).support_account == value
