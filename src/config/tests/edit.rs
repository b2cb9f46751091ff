//! `set_mapping` and `remove_mapping`: the one port's lines change and every other byte stays,
//! and the loader reads back exactly the mappings meant; `write_atomically` replaces a file
//! whole, keeps its mode and leaves no temporary file behind.

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// A file with every kind of line the edits must keep.
const FILE: &str = "\
# Port mappings
; ports 1000-9999

[MAPPER]
# ssh to the office
1234 = 192.168.10.5:22   # office ssh
2000=db.internal:5432 ; the database
  3000 :10.0.0.3:80
# 4000=10.0.0.4:80 (off for now)

[TAG]
2000=office  # moved in May
";

/// The TCP mappings the loader reads from `text`, as (port, target, tag).
fn load(text: &str) -> Vec<(u16, String, String)> {
    load_proto(text, Proto::Tcp)
}

/// The `proto` mappings the loader reads from `text`, as (port, target, tag).
fn load_proto(text: &str, proto: Proto) -> Vec<(u16, String, String)> {
    let s = Scratch::new("edit");
    let path = s.write("port_mapper.cfg", text);
    let mut warnings = Vec::new();
    let got = load_mappings(
        &path,
        1111,
        Path::new("forward_server.cfg"),
        None,
        &mut warnings,
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
    triples(match proto {
        Proto::Tcp => &got.tcp,
        Proto::Udp => &got.udp,
    })
}

#[test]
fn replace_changes_only_the_value() {
    let got = set_mapping(FILE, 1234, "10.0.0.9:2222", DEFAULT_TAG);
    assert_eq!(
        got,
        FILE.replace(
            "1234 = 192.168.10.5:22   # office ssh",
            "1234 = 10.0.0.9:2222   # office ssh"
        )
    );
    let got = set_mapping(FILE, 3000, "[::1]:8080", DEFAULT_TAG);
    assert_eq!(
        got,
        FILE.replace("  3000 :10.0.0.3:80\n", "  3000 :[::1]:8080\n")
    );
    let got = set_mapping(FILE, 2000, "db.internal:5433", "office");
    assert_eq!(
        got,
        FILE.replace(
            "2000=db.internal:5432 ; the database",
            "2000=db.internal:5433 ; the database"
        )
    );
    assert_eq!(set_mapping(FILE, 2000, "db.internal:5432", "office"), FILE);
    assert_eq!(
        load(&set_mapping(FILE, 1234, "10.0.0.9:2222", DEFAULT_TAG)),
        want(&[
            (1234, "10.0.0.9:2222", "default"),
            (2000, "db.internal:5432", "office"),
            (3000, "10.0.0.3:80", "default"),
        ])
    );
}

#[test]
fn a_new_port_goes_after_the_last_entry_of_the_last_mapper_section() {
    let got = set_mapping(FILE, 4000, "10.0.0.4:80", DEFAULT_TAG);
    assert_eq!(
        got,
        FILE.replace(
            "  3000 :10.0.0.3:80\n",
            "  3000 :10.0.0.3:80\n4000=10.0.0.4:80\n"
        )
    );
    // Two [MAPPER] sections: the last one; an empty one: right after its header.
    let two = "[MAPPER]\n1=h:1\n[TAG]\n1=a\n[Mapper]\n2=h:2\n\n[other]\nx=y\n";
    assert_eq!(
        set_mapping(two, 3, "h:3", DEFAULT_TAG),
        "[MAPPER]\n1=h:1\n[TAG]\n1=a\n[Mapper]\n2=h:2\n3=h:3\n\n[other]\nx=y\n"
    );
    let empty = "# top\n[MAPPER]\n# none yet\n\n[TAG]\n";
    assert_eq!(
        set_mapping(empty, 3, "h:3", DEFAULT_TAG),
        "# top\n[MAPPER]\n3=h:3\n# none yet\n\n[TAG]\n"
    );
    assert_eq!(
        load(&set_mapping(two, 3, "h:3", DEFAULT_TAG)),
        want(&[
            (1, "h:1", "a"),
            (2, "h:2", "default"),
            (3, "h:3", "default")
        ])
    );
}

#[test]
fn tags_set_changed_and_removed() {
    // Set: a new line after the last [TAG] entry.
    let got = set_mapping(FILE, 1234, "192.168.10.5:22", "web");
    assert_eq!(got, format!("{FILE}1234=web\n"));
    // Changed: the value only, the comment stays.
    let got = set_mapping(FILE, 2000, "db.internal:5432", "home");
    assert_eq!(
        got,
        FILE.replace("2000=office  # moved in May", "2000=home  # moved in May")
    );
    // Removed: the line goes, nothing else.
    let got = set_mapping(FILE, 2000, "db.internal:5432", DEFAULT_TAG);
    assert_eq!(got, FILE.replace("2000=office  # moved in May\n", ""));
    assert_eq!(
        load(&got),
        want(&[
            (1234, "192.168.10.5:22", "default"),
            (2000, "db.internal:5432", "default"),
            (3000, "10.0.0.3:80", "default"),
        ])
    );
    // A new port with a tag, in a file without [TAG].
    let got = set_mapping("[MAPPER]\n1=h:1\n", 2, "h:2", "web");
    assert_eq!(got, "[MAPPER]\n1=h:1\n2=h:2\n\n[TAG]\n2=web\n");
    assert_eq!(
        load(&got),
        want(&[(1, "h:1", "default"), (2, "h:2", "web")])
    );
}

#[test]
fn a_tag_that_starts_like_a_comment_is_written_as_a_value() {
    let text = "[MAPPER]\n1 = h:1\n[TAG]\n1 = web   # note\n";
    let got = set_mapping(text, 1, "h:1", "#web");
    assert_eq!(got, "[MAPPER]\n1 = h:1\n[TAG]\n1 =#web   # note\n");
    assert_eq!(load(&got), want(&[(1, "h:1", "#web")]));
    let got = set_mapping("[MAPPER]\n1=h:1\n", 1, "h:1", ";x");
    assert_eq!(load(&got), want(&[(1, "h:1", ";x")]));
}

#[test]
fn no_mapper_section() {
    assert_eq!(
        set_mapping("", 1234, "10.0.0.1:22", DEFAULT_TAG),
        "[MAPPER]\n1234=10.0.0.1:22\n"
    );
    let text = "# mappings\n[OTHER]\nx=y\n";
    let got = set_mapping(text, 1234, "10.0.0.1:22", "web");
    assert_eq!(
        got,
        "# mappings\n[OTHER]\nx=y\n\n[MAPPER]\n1234=10.0.0.1:22\n\n[TAG]\n1234=web\n"
    );
    assert_eq!(load(&got), want(&[(1234, "10.0.0.1:22", "web")]));
    // A blank last line already separates the new section.
    assert_eq!(
        set_mapping("# none\n\n", 1, "h:1", DEFAULT_TAG),
        "# none\n\n[MAPPER]\n1=h:1\n"
    );
}

#[test]
fn crlf_bom_and_a_missing_final_newline_stay() {
    let text = "\u{feff}[MAPPER]\r\n1234=10.0.0.1:22\r\n[TAG]\r\n1234=web";
    let got = set_mapping(text, 2000, "10.0.0.2:22", "db");
    assert_eq!(
        got,
        "\u{feff}[MAPPER]\r\n1234=10.0.0.1:22\r\n2000=10.0.0.2:22\r\n[TAG]\r\n1234=web\r\n2000=db"
    );
    assert_eq!(
        load(&got),
        want(&[(1234, "10.0.0.1:22", "web"), (2000, "10.0.0.2:22", "db")])
    );
    let got = set_mapping(text, 1234, "10.0.0.1:22", DEFAULT_TAG);
    assert_eq!(got, "\u{feff}[MAPPER]\r\n1234=10.0.0.1:22\r\n[TAG]");
    let got = remove_mapping(text, 1234);
    assert_eq!(got, "\u{feff}[MAPPER]\r\n[TAG]");
    assert_eq!(
        set_mapping("[MAPPER]\n1=h:1", 2, "h:2", DEFAULT_TAG),
        "[MAPPER]\n1=h:1\n2=h:2"
    );
    assert_eq!(
        set_mapping("x=y", 1, "h:1", DEFAULT_TAG),
        "x=y\n\n[MAPPER]\n1=h:1"
    );
    let got = set_mapping("\u{feff}# m\r\n", 1, "h:1", "t");
    assert_eq!(
        got,
        "\u{feff}# m\r\n\r\n[MAPPER]\r\n1=h:1\r\n\r\n[TAG]\r\n1=t\r\n"
    );
    assert_eq!(load(&got), want(&[(1, "h:1", "t")]));
}

#[test]
fn lowercase_sections_and_a_colon_separator() {
    let text = "[mapper]\n01234: 10.0.0.1:22 # x\n[tag]\n01234 : web\n";
    let got = set_mapping(text, 1234, "10.0.0.2:22", "db");
    assert_eq!(got, "[mapper]\n01234: 10.0.0.2:22 # x\n[tag]\n01234 : db\n");
    assert_eq!(load(&got), want(&[(1234, "10.0.0.2:22", "db")]));
    let got = set_mapping(text, 1234, "10.0.0.1:22", DEFAULT_TAG);
    assert_eq!(got, "[mapper]\n01234: 10.0.0.1:22 # x\n[tag]\n");
    assert_eq!(remove_mapping(text, 1234), "[mapper]\n[tag]\n");
    // An empty value gets the new one right after the separator.
    assert_eq!(
        set_mapping("[MAPPER]\n7=   # todo\n", 7, "h:7", DEFAULT_TAG),
        "[MAPPER]\n7=h:7   # todo\n"
    );
    // Keys of other sections, or outside any, are not the port's.
    let text = "7=h:1\n[DEFAULT]\n7=x\n[MAPPER]\n8=h:8\n";
    assert_eq!(
        set_mapping(text, 7, "h:7", DEFAULT_TAG),
        "7=h:1\n[DEFAULT]\n7=x\n[MAPPER]\n8=h:8\n7=h:7\n"
    );
}

#[test]
fn remove_takes_only_the_ports_lines() {
    let got = remove_mapping(FILE, 2000);
    assert_eq!(
        got,
        FILE.replace("2000=db.internal:5432 ; the database\n", "")
            .replace("2000=office  # moved in May\n", "")
    );
    assert_eq!(
        load(&got),
        want(&[
            (1234, "192.168.10.5:22", "default"),
            (3000, "10.0.0.3:80", "default")
        ])
    );
    // The comment above the removed line stays.
    let got = remove_mapping(FILE, 1234);
    assert!(got.contains("# ssh to the office\n2000="), "{got}");
    assert_eq!(remove_mapping(FILE, 4000), FILE);
    assert_eq!(remove_mapping("", 1), "");
}

#[test]
fn edits_round_trip_through_the_loader() {
    let mut text = FILE.to_string();
    let mut model: BTreeMap<u16, (String, String)> = load(&text)
        .into_iter()
        .map(|(p, t, g)| (p, (t, g)))
        .collect();
    let steps: &[(u16, Option<(&str, &str)>)] = &[
        (4000, Some(("10.0.0.4:80", "web"))),
        (1234, Some(("192.168.10.6:22", "ops"))),
        (2000, None),
        (5000, Some(("[2001:db8::5]:443", DEFAULT_TAG))),
        (1234, Some(("192.168.10.6:22", DEFAULT_TAG))),
        (2000, Some(("db.internal:5432", "office"))),
        (3000, None),
        (4000, Some(("host_4.internal.:8080", "web-2"))),
        (9999, None),
    ];
    for &(port, change) in steps {
        match change {
            Some((target, tag)) => {
                text = set_mapping(&text, port, target, tag);
                model.insert(port, (target.to_string(), tag.to_string()));
            }
            None => {
                text = remove_mapping(&text, port);
                model.remove(&port);
            }
        }
        let want: Vec<_> = model
            .iter()
            .map(|(&p, (t, g))| (p, t.clone(), g.clone()))
            .collect();
        assert_eq!(load(&text), want, "after {port} {change:?}:\n{text}");
        for line in FILE.lines().filter(|l| l.starts_with(['#', ';'])) {
            assert!(text.contains(line), "{line:?} lost:\n{text}");
        }
    }
}

#[test]
fn write_atomically_replaces_the_file_and_keeps_its_mode() {
    let s = Scratch::new("atomic");
    let path = s.write("port_mapper.cfg", "old\n");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    write_atomically(&path, "new text\n").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "new text\n");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    let names: Vec<_> = fs::read_dir(&s.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["port_mapper.cfg"]);

    // A file that does not exist yet is created.
    let fresh = s.0.join("fresh.cfg");
    write_atomically(&fresh, "x").unwrap();
    assert_eq!(fs::read_to_string(&fresh).unwrap(), "x");

    // Through a symbolic link: the file it points to changes, the link stays.
    let link = s.0.join("link.cfg");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    write_atomically(&link, "via link\n").unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "via link\n");
    let mut names: Vec<_> = fs::read_dir(&s.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["fresh.cfg", "link.cfg", "port_mapper.cfg"]);
}

#[test]
fn write_atomically_names_the_path_on_failure() {
    let s = Scratch::new("atomic-err");
    let path = s.0.join("missing").join("port_mapper.cfg");
    let e = write_atomically(&path, "x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    // A folder where the file should be: the rename fails, the temporary file goes.
    let dir = s.0.join("port_mapper.cfg");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inside"), "x").unwrap();
    let e = write_atomically(&dir, "x").unwrap_err();
    assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    let names: Vec<_> = fs::read_dir(&s.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["port_mapper.cfg"]);
}

#[test]
fn removing_a_mapping_removes_its_allow_list_and_limit() {
    let text = "[MAPPER]\n1=h:1\n2=h:2\n[ALLOW]\n1=10.0.0.0/8\n2=::1\n";
    assert_eq!(remove_mapping(text, 1), "[MAPPER]\n2=h:2\n[ALLOW]\n2=::1\n");
    let limited = "[MAPPER]\n1=h:1\n2=h:2\n[LIMIT]\n1=10mbit\n2=1MB\n";
    assert_eq!(
        remove_mapping(limited, 1),
        "[MAPPER]\n2=h:2\n[LIMIT]\n2=1MB\n"
    );
    assert_eq!(
        set_mapping(limited, 1, "h:9", DEFAULT_TAG),
        "[MAPPER]\n1=h:9\n2=h:2\n[LIMIT]\n1=10mbit\n2=1MB\n"
    );
    // Setting a target or tag leaves the allow-list alone.
    assert_eq!(
        set_mapping(text, 1, "h:9", DEFAULT_TAG),
        "[MAPPER]\n1=h:9\n2=h:2\n[ALLOW]\n1=10.0.0.0/8\n2=::1\n"
    );
}

/// A file with port ranges.
const RANGES: &str = "\
[MAPPER]
6000-6004 = 10.0.0.5:7000-7004   # web farm
6100-6102=10.0.0.6
[TAG]
6000-6004=farm
[ALLOW]
6100-6102=10.0.0.0/8
";

#[test]
fn changing_one_port_of_a_range_splits_its_lines() {
    let got = set_mapping(RANGES, 6002, "10.0.0.9:22", "other");
    assert_eq!(
        got,
        "\
[MAPPER]
6000-6001 = 10.0.0.5:7000-7001   # web farm
6002=10.0.0.9:22
6003-6004=10.0.0.5:7003-7004
6100-6102=10.0.0.6
[TAG]
6000-6001=farm
6002=other
6003-6004=farm
[ALLOW]
6100-6102=10.0.0.0/8
"
    );
    let mut all = load(RANGES);
    all[2] = (6002, "10.0.0.9:22".to_string(), "other".to_string());
    assert_eq!(load(&got), all);

    // The ends of a range, and a bare-host range (same ports) that keeps its form.
    let got = set_mapping(RANGES, 6100, "10.0.0.9:22", DEFAULT_TAG);
    assert!(
        got.contains("6100=10.0.0.9:22\n6101-6102=10.0.0.6\n"),
        "{got}"
    );
    let got = set_mapping(RANGES, 6102, "10.0.0.9:22", DEFAULT_TAG);
    assert!(
        got.contains("6100-6101=10.0.0.6\n6102=10.0.0.9:22\n"),
        "{got}"
    );
    let got = set_mapping(RANGES, 6101, "10.0.0.9:22", DEFAULT_TAG);
    assert!(
        got.contains("6100=10.0.0.6:6100\n6101=10.0.0.9:22\n6102=10.0.0.6:6102\n"),
        "{got}"
    );
    // The allow-list line is not the API's to change: it stays whole.
    assert!(got.contains("[ALLOW]\n6100-6102=10.0.0.0/8\n"), "{got}");
}

#[test]
fn setting_what_a_range_already_says_changes_nothing() {
    assert_eq!(set_mapping(RANGES, 6003, "10.0.0.5:7003", "farm"), RANGES);
    assert_eq!(
        set_mapping(RANGES, 6101, "10.0.0.6:6101", DEFAULT_TAG),
        RANGES
    );
}

#[test]
fn removing_one_port_of_a_range_splits_every_section() {
    let got = remove_mapping(RANGES, 6000);
    assert_eq!(
        got,
        RANGES
            .replace(
                "6000-6004 = 10.0.0.5:7000-7004",
                "6001-6004 = 10.0.0.5:7001-7004"
            )
            .replace("6000-6004=farm", "6001-6004=farm")
    );
    let got = remove_mapping(RANGES, 6101);
    assert!(
        got.contains("6100=10.0.0.6:6100\n6102=10.0.0.6:6102\n"),
        "{got}"
    );
    assert!(
        got.contains("[ALLOW]\n6100=10.0.0.0/8\n6102=10.0.0.0/8\n"),
        "{got}"
    );
    let mut all = load(RANGES);
    all.retain(|m| m.0 != 6101);
    assert_eq!(load(&got), all);
    // Every port of a range, one by one: nothing of it is left.
    let mut text = RANGES.to_string();
    for port in 6000..=6004 {
        text = remove_mapping(&text, port);
    }
    assert_eq!(
        text,
        "[MAPPER]\n6100-6102=10.0.0.6\n[TAG]\n[ALLOW]\n6100-6102=10.0.0.0/8\n"
    );
}

#[test]
fn removing_a_mapping_removes_its_proxy_line() {
    let text = "[MAPPER]\n1234=10.0.0.1:22\n2000=10.0.0.2:22\n[PROXY]\n1234=v1\n2000=V2\n";
    assert_eq!(
        remove_mapping(text, 1234),
        "[MAPPER]\n2000=10.0.0.2:22\n[PROXY]\n2000=V2\n"
    );
    // Setting a mapping leaves the line alone.
    assert_eq!(
        set_mapping(text, 1234, "10.0.0.9:22", "web"),
        "[MAPPER]\n1234=10.0.0.9:22\n2000=10.0.0.2:22\n[PROXY]\n1234=v1\n2000=V2\n\n[TAG]\n1234=web\n"
    );
}

#[test]
fn a_range_target_written_with_leading_zeros_is_split_by_its_numbers() {
    let text = "[MAPPER]\n6000-6002=10.0.0.5:06000-06002\n";
    let got = set_mapping(text, 6001, "10.0.0.9:22", DEFAULT_TAG);
    assert_eq!(
        got,
        "[MAPPER]\n6000=10.0.0.5:6000\n6001=10.0.0.9:22\n6002=10.0.0.5:6002\n"
    );
    assert_eq!(load(&got).len(), 3);
}

/// A file that maps port 53 for TCP and UDP, 5353 for UDP only, 22 for TCP only.
const BOTH: &str = "\
[MAPPER]
53=10.0.0.5:53   # dns over tcp
22=10.0.0.5:22
[UDP]
53 = 10.0.0.6:53 ; dns
5353=10.0.0.7:5353
[TAG]
53=dns
[ALLOW]
53=10.0.0.0/8
[PROXY]
53=v1
[LIMIT]
53=1mbit
";

#[test]
fn udp_edits_leave_mapper_alone() {
    // Replace: the [UDP] value only.
    let got = set_proto_mapping(BOTH, Proto::Udp, 53, "10.0.0.9:53", "dns");
    assert_eq!(
        got,
        BOTH.replace("53 = 10.0.0.6:53 ; dns", "53 = 10.0.0.9:53 ; dns")
    );
    assert_eq!(load(&got), load(BOTH));
    // Add: after the last [UDP] entry; the tag is the port number's.
    let got = set_proto_mapping(BOTH, Proto::Udp, 22, "10.0.0.9:22", "ssh");
    assert_eq!(
        got,
        BOTH.replace(
            "5353=10.0.0.7:5353\n",
            "5353=10.0.0.7:5353\n22=10.0.0.9:22\n"
        )
        .replace("53=dns\n", "53=dns\n22=ssh\n")
    );
    assert_eq!(
        load_proto(&got, Proto::Udp),
        want(&[
            (22, "10.0.0.9:22", "ssh"),
            (53, "10.0.0.6:53", "dns"),
            (5353, "10.0.0.7:5353", "default")
        ])
    );
    assert_eq!(
        load(&got),
        want(&[(22, "10.0.0.5:22", "ssh"), (53, "10.0.0.5:53", "dns")])
    );
    // And the other way round: a TCP edit leaves [UDP] alone.
    let got = set_proto_mapping(BOTH, Proto::Tcp, 53, "10.0.0.9:53", "dns");
    assert_eq!(got, set_mapping(BOTH, 53, "10.0.0.9:53", "dns"));
    assert_eq!(
        got,
        BOTH.replace("53=10.0.0.5:53   # dns", "53=10.0.0.9:53   # dns")
    );
    assert_eq!(load_proto(&got, Proto::Udp), load_proto(BOTH, Proto::Udp));
    let got = set_mapping(BOTH, 5353, "10.0.0.9:80", DEFAULT_TAG);
    assert_eq!(
        got,
        BOTH.replace("22=10.0.0.5:22\n", "22=10.0.0.5:22\n5353=10.0.0.9:80\n")
    );
}

#[test]
fn a_udp_section_is_created_when_missing() {
    let text = "[MAPPER]\n22=10.0.0.5:22\n";
    let got = set_proto_mapping(text, Proto::Udp, 22, "10.0.0.5:53", DEFAULT_TAG);
    assert_eq!(got, "[MAPPER]\n22=10.0.0.5:22\n\n[UDP]\n22=10.0.0.5:53\n");
    assert_eq!(
        load_proto(&got, Proto::Udp),
        want(&[(22, "10.0.0.5:53", "default")])
    );
    assert_eq!(load(&got), want(&[(22, "10.0.0.5:22", "default")]));
    assert_eq!(
        set_proto_mapping("", Proto::Udp, 53, "[::1]:53", "dns"),
        "[UDP]\n53=[::1]:53\n\n[TAG]\n53=dns\n"
    );
}

#[test]
fn deleting_one_protocol_keeps_the_ports_shared_lines() {
    // UDP 53 goes: TCP 53 still uses its tag, allow-list, limit and PROXY line.
    let got = remove_proto_mapping(BOTH, Proto::Udp, 53);
    assert_eq!(got, BOTH.replace("53 = 10.0.0.6:53 ; dns\n", ""));
    assert_eq!(load(&got), load(BOTH));
    assert_eq!(
        load_proto(&got, Proto::Udp),
        want(&[(5353, "10.0.0.7:5353", "default")])
    );
    // TCP 53 goes: UDP 53 keeps the shared lines, the PROXY line goes with TCP.
    let got = remove_proto_mapping(BOTH, Proto::Tcp, 53);
    assert_eq!(got, remove_mapping(BOTH, 53));
    assert_eq!(
        got,
        BOTH.replace("53=10.0.0.5:53   # dns over tcp\n", "")
            .replace("[PROXY]\n53=v1\n", "[PROXY]\n")
    );
    assert_eq!(load_proto(&got, Proto::Udp), load_proto(BOTH, Proto::Udp));
    assert_eq!(load(&got), want(&[(22, "10.0.0.5:22", "default")]));
    // Both go: nothing of port 53 is left.
    let none = remove_proto_mapping(&got, Proto::Udp, 53);
    assert_eq!(
        none,
        "[MAPPER]\n22=10.0.0.5:22\n[UDP]\n5353=10.0.0.7:5353\n[TAG]\n[ALLOW]\n[PROXY]\n[LIMIT]\n"
    );
    assert_eq!(
        remove_proto_mapping(&remove_mapping(BOTH, 53), Proto::Udp, 53),
        none
    );
    assert_eq!(
        remove_mapping(&remove_proto_mapping(BOTH, Proto::Udp, 53), 53),
        none
    );
    // A port the protocol does not map: nothing changes, not even the shared lines.
    assert_eq!(remove_proto_mapping(BOTH, Proto::Udp, 22), BOTH);
    assert_eq!(remove_mapping(BOTH, 5353), BOTH);
}

#[test]
fn one_port_of_a_udp_range_split_and_removed() {
    let text = "\
[MAPPER]
6002=10.0.0.5:22
[UDP]
6000-6004 = 10.0.0.5:7000-7004   # game servers
[TAG]
6000-6004=game
";
    let got = set_proto_mapping(text, Proto::Udp, 6002, "10.0.0.9:53", "game");
    assert_eq!(
        got,
        "\
[MAPPER]
6002=10.0.0.5:22
[UDP]
6000-6001 = 10.0.0.5:7000-7001   # game servers
6002=10.0.0.9:53
6003-6004=10.0.0.5:7003-7004
[TAG]
6000-6004=game
"
    );
    let mut all = load_proto(text, Proto::Udp);
    all[2].1 = "10.0.0.9:53".to_string();
    assert_eq!(load_proto(&got, Proto::Udp), all);
    // Removing UDP 6002: TCP 6002 still uses the tag, so that range stays whole.
    let got = remove_proto_mapping(text, Proto::Udp, 6002);
    assert!(
        got.contains(
            "[UDP]\n6000-6001 = 10.0.0.5:7000-7001   # game servers\n6003-6004=10.0.0.5:7003-7004\n"
        ),
        "{got}"
    );
    assert!(got.contains("[TAG]\n6000-6004=game\n"), "{got}");
    assert_eq!(load(&got), want(&[(6002, "10.0.0.5:22", "game")]));
    assert_eq!(load_proto(&got, Proto::Udp).len(), 4);
    // Removing UDP 6001 (no TCP mapping): the tag range is split too.
    let got = remove_proto_mapping(text, Proto::Udp, 6001);
    assert!(got.contains("[TAG]\n6000=game\n6002-6004=game\n"), "{got}");
    // A range in [MAPPER] is not split by a UDP edit of one of its ports.
    let tcp = "[MAPPER]\n6000-6004=10.0.0.5\n";
    let got = set_proto_mapping(tcp, Proto::Udp, 6002, "10.0.0.5:53", DEFAULT_TAG);
    assert_eq!(
        got,
        "[MAPPER]\n6000-6004=10.0.0.5\n\n[UDP]\n6002=10.0.0.5:53\n"
    );
    assert_eq!(remove_proto_mapping(tcp, Proto::Udp, 6002), tcp);
}

#[test]
fn protos_parse_and_name_their_sections() {
    assert_eq!(Proto::parse("tcp"), Some(Proto::Tcp));
    assert_eq!(Proto::parse(" UDP "), Some(Proto::Udp));
    assert_eq!(Proto::parse("sctp"), None);
    assert_eq!(Proto::parse(""), None);
    assert_eq!(Proto::Tcp.section(), "MAPPER");
    assert_eq!(Proto::Udp.section(), "UDP");
    assert_eq!(Proto::Udp.other(), Proto::Tcp);
    assert_eq!(Proto::Tcp.to_string(), "tcp");
    assert_eq!(Proto::Udp.to_string(), "udp");
}
