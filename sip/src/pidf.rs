//! A tolerant reader of presence documents (`application/pidf+xml`) for
//! archiving.
//!
//! The archive wants to know *whose* presence a document describes and
//! *what* it says: the entity, per tuple its basic status, contact and notes,
//! per person the activities and notes. Everything else (timestamps, device
//! capabilities, icons, civic locations, ...) is skipped.
//!
//! Formats read:
//!
//! * PIDF (RFC 3863): `<presence entity=...>` with `<tuple id=...>`
//!   holding `<status><basic>`, `<contact>` and `<note>`, and presence-level
//!   `<note>`s;
//! * the data model (RFC 4479): `<dm:person>` (and `<dm:device>`, skipped)
//!   beside the tuples, with `<dm:note>`s;
//! * RPID (RFC 4480): `<rpid:activities>` whose children name the activity
//!   (`<rpid:away/>`, `<rpid:on-the-phone/>`; `<rpid:other>` carries free
//!   text, which becomes the activity);
//! * the pre-RFC RPID draft that Microsoft clients and servers (Windows
//!   Messenger, OCS/Lync federation) and older softphones send:
//!   `<ep:activities><ep:activity>busy</ep:activity></ep:activities>`,
//!   usually inside a tuple's `<status>`.
//!
//! Element names are matched by local name, case-insensitively: prefixes
//! vary between clients (`rpid:`, `rp:`, `dm:`, `ep:`, none) and the
//! namespaces themselves are not checked, so a default namespace bound to
//! something else still reads. Structure elements count only where RFC 3863
//! puts them (`basic` inside a tuple's `status`, `contact` in a tuple,
//! `note` in a tuple, person or the presence element), so an extension that
//! reuses the name elsewhere does not leak into the result.
//!
//! Tolerated: a UTF-8 byte order mark, invalid UTF-8 (replaced), a bare `&`
//! in text, unknown entity references in text (kept as written), anything
//! after the root element ends. Errors: an empty body, XML that is not
//! well-formed (mismatched or unclosed tags, broken markup), a root element
//! other than `<presence>`. Nothing here panics on any input
//! (proptest-fuzzed).

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// Why a body could not be read as a presence document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidfError {
    #[error("empty presence document")]
    Empty,
    #[error("malformed XML at byte {position}: {reason}")]
    Malformed { position: u64, reason: String },
    #[error("no root element")]
    NoRootElement,
    #[error("not a presence document: root element is <{0}>")]
    NotPresence(String),
    #[error("presence document ends inside <{0}>")]
    Unterminated(String),
}

/// What a presence document says, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceDocument {
    /// The presentity URI (`entity` attribute of `<presence>`), as written.
    pub entity: Option<String>,
    pub tuples: Vec<Tuple>,
    /// Data-model persons (RFC 4479): the human side of the presentity.
    pub persons: Vec<Person>,
    /// `<note>`s directly inside `<presence>`.
    pub notes: Vec<String>,
}

/// One `<tuple>`: a way of reaching the presentity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuple {
    pub id: Option<String>,
    /// `<status><basic>`, lower-cased: `open` or `closed` when the sender
    /// follows RFC 3863.
    pub basic: Option<String>,
    pub contact: Option<String>,
    pub notes: Vec<String>,
    /// Activities written inside the tuple (the pre-RFC RPID draft puts
    /// them in `<status>`).
    pub activities: Vec<String>,
}

/// One data-model `<person>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    pub id: Option<String>,
    pub activities: Vec<String>,
    pub notes: Vec<String>,
}

impl PresenceDocument {
    /// Basic status of the first tuple that has one.
    pub fn basic(&self) -> Option<&str> {
        self.tuples.iter().find_map(|t| t.basic.as_deref())
    }

    /// Every activity of every person, then of every tuple, without repeats.
    pub fn activities(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .persons
            .iter()
            .flat_map(|p| &p.activities)
            .chain(self.tuples.iter().flat_map(|t| &t.activities));
        for activity in all {
            if !out.contains(activity) {
                out.push(activity.clone());
            }
        }
        out
    }

    /// The note a person reads as "status message": a person's first note
    /// (what the user typed), else a tuple's, else the presence-level one.
    pub fn note(&self) -> Option<&str> {
        let person = self.persons.iter().flat_map(|p| &p.notes).next();
        let tuple = || self.tuples.iter().flat_map(|t| &t.notes).next();
        person
            .or_else(tuple)
            .or_else(|| self.notes.first())
            .map(String::as_str)
    }
}

/// Reads a presence document. See the module docs for what is tolerated.
pub fn parse(body: &[u8]) -> Result<PresenceDocument, PidfError> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return Err(PidfError::Empty);
    }
    let mut reader = Reader::from_str(text);
    // Users type "Tom & Jerry" into notes and some clients do not escape it.
    reader.config_mut().allow_dangling_amp = true;
    let mut builder = Builder::default();
    loop {
        let event = reader.read_event().map_err(|e| PidfError::Malformed {
            position: reader.error_position(),
            reason: e.to_string(),
        })?;
        let position = reader.buffer_position();
        match event {
            Event::Start(start) => builder.start(&start, false, position)?,
            Event::Empty(start) => builder.start(&start, true, position)?,
            Event::End(_) => builder.end(),
            Event::Text(text) => builder.text(&text.xml10_content()),
            Event::CData(data) => builder.text(&data.xml10_content()),
            Event::GeneralRef(reference) => builder.text(&resolve_reference(&reference)),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
        // Whatever follows the root element is not part of the document.
        if builder.finished {
            break;
        }
    }
    builder.finish()
}

/// `&#x41;` / `&lt;` as the character they stand for; an unknown entity
/// (no DTD is read) stays as written.
fn resolve_reference(reference: &BytesRef<'_>) -> String {
    if let Ok(Some(c)) = reference.resolve_char_ref() {
        return c.to_string();
    }
    let name: &str = reference;
    match quick_xml::escape::resolve_predefined_entity(name) {
        Some(resolved) => resolved.to_string(),
        None => format!("&{name};"),
    }
}

/// Where text being collected goes when its element ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextTarget {
    Basic,
    Contact,
    Note,
    /// A draft-style `<activity>` or RPID `<other>`: its text is the activity.
    Activity,
}

/// What the element at one level of the open-element stack is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Presence,
    Tuple,
    Status,
    Person,
    /// An `<activities>` element; its children name activities.
    Activities,
    /// An element whose text is collected.
    Text(TextTarget),
    /// Anything else (kept so its end tag pops the right level).
    Other,
}

#[derive(Default)]
struct Builder {
    doc: PresenceDocument,
    stack: Vec<(Frame, String)>,
    tuple: Option<Tuple>,
    person: Option<Person>,
    /// Text of the open text element (notes may hold markup: the text of
    /// nested elements counts too).
    text: String,
    collecting: bool,
    seen_root: bool,
    finished: bool,
}

fn local_name(start: &BytesStart<'_>) -> String {
    start.local_name().into_inner().to_string()
}

fn is(name: &str, expected: &str) -> bool {
    name.eq_ignore_ascii_case(expected)
}

impl Builder {
    fn parent(&self) -> Option<&Frame> {
        self.stack.last().map(|(frame, _)| frame)
    }

    /// The innermost open presence, tuple or person element: a note or an
    /// activity belongs to it.
    fn owner(&self) -> Option<Frame> {
        self.stack
            .iter()
            .rev()
            .map(|(frame, _)| frame)
            .find(|f| matches!(f, Frame::Presence | Frame::Tuple | Frame::Person))
            .cloned()
    }

    fn start(
        &mut self,
        start: &BytesStart<'_>,
        empty: bool,
        position: u64,
    ) -> Result<(), PidfError> {
        let name = local_name(start);
        let attribute = |name: &str| {
            attribute(start, name).map_err(|reason| PidfError::Malformed { position, reason })
        };
        if !self.seen_root {
            if !is(&name, "presence") {
                return Err(PidfError::NotPresence(name));
            }
            self.seen_root = true;
            self.doc.entity = attribute("entity")?;
            self.push(Frame::Presence, name, empty);
            return Ok(());
        }
        let parent = self.parent().cloned();
        let frame = match parent {
            Some(Frame::Presence) if is(&name, "tuple") => {
                self.tuple = Some(Tuple {
                    id: attribute("id")?,
                    ..Tuple::default()
                });
                Frame::Tuple
            }
            Some(Frame::Presence) if is(&name, "person") => {
                self.person = Some(Person {
                    id: attribute("id")?,
                    ..Person::default()
                });
                Frame::Person
            }
            Some(Frame::Tuple) if is(&name, "status") => Frame::Status,
            Some(Frame::Tuple) if is(&name, "contact") => Frame::Text(TextTarget::Contact),
            Some(Frame::Status) if is(&name, "basic") => Frame::Text(TextTarget::Basic),
            Some(Frame::Presence | Frame::Tuple | Frame::Person) if is(&name, "note") => {
                Frame::Text(TextTarget::Note)
            }
            Some(Frame::Activities) if is(&name, "activity") || is(&name, "other") => {
                Frame::Text(TextTarget::Activity)
            }
            // RFC 4480 allows notes about the activities among them.
            Some(Frame::Activities) if is(&name, "note") => Frame::Text(TextTarget::Note),
            Some(Frame::Activities) => {
                // RFC 4480: the child element's name is the activity.
                self.add_activity(name.clone());
                Frame::Other
            }
            _ if is(&name, "activities")
                && !self.collecting
                && matches!(self.owner(), Some(Frame::Tuple | Frame::Person)) =>
            {
                Frame::Activities
            }
            _ => Frame::Other,
        };
        self.push(frame, name, empty);
        Ok(())
    }

    fn push(&mut self, frame: Frame, name: String, empty: bool) {
        if matches!(frame, Frame::Text(_)) {
            self.text.clear();
            self.collecting = true;
        }
        self.stack.push((frame, name));
        if empty {
            self.end();
        }
    }

    fn text(&mut self, text: &str) {
        if self.collecting {
            self.text.push_str(text);
        }
    }

    fn end(&mut self) {
        let Some((frame, name)) = self.stack.pop() else {
            return;
        };
        match frame {
            Frame::Presence => self.finished = true,
            Frame::Tuple => self.doc.tuples.extend(self.tuple.take()),
            Frame::Person => self.doc.persons.extend(self.person.take()),
            Frame::Text(target) => {
                self.collecting = false;
                let value = self.text.trim().to_string();
                self.text.clear();
                if !value.is_empty() {
                    self.collect(target, value);
                } else if target == TextTarget::Activity && is(&name, "other") {
                    // An RPID <other/> without text still says "some other activity".
                    self.add_activity(name);
                }
            }
            Frame::Status | Frame::Activities | Frame::Other => {}
        }
    }

    fn collect(&mut self, target: TextTarget, value: String) {
        match target {
            TextTarget::Basic => {
                if let Some(tuple) = &mut self.tuple {
                    tuple.basic.get_or_insert(value.to_ascii_lowercase());
                }
            }
            TextTarget::Contact => {
                if let Some(tuple) = &mut self.tuple {
                    tuple.contact.get_or_insert(value);
                }
            }
            TextTarget::Note => match (self.owner(), &mut self.tuple, &mut self.person) {
                (Some(Frame::Tuple), Some(tuple), _) => tuple.notes.push(value),
                (Some(Frame::Person), _, Some(person)) => person.notes.push(value),
                _ => self.doc.notes.push(value),
            },
            TextTarget::Activity => self.add_activity(value),
        }
    }

    /// Activities belong to the tuple or person they are written in.
    fn add_activity(&mut self, activity: String) {
        match (self.owner(), &mut self.tuple, &mut self.person) {
            (Some(Frame::Tuple), Some(tuple), _) => tuple.activities.push(activity),
            (Some(Frame::Person), _, Some(person)) => person.activities.push(activity),
            _ => {}
        }
    }

    fn finish(self) -> Result<PresenceDocument, PidfError> {
        if !self.seen_root {
            return Err(PidfError::NoRootElement);
        }
        match self.stack.into_iter().next_back() {
            Some((_, name)) => Err(PidfError::Unterminated(name)),
            None => Ok(self.doc),
        }
    }
}

/// The unescaped value of an attribute, matched by local name; `Err` with
/// the reason when the start tag's attributes are malformed (every one is
/// checked, so a repeated attribute is an error, not a silent first pick).
fn attribute(start: &BytesStart<'_>, wanted: &str) -> Result<Option<String>, String> {
    let mut found = None;
    for attr in start.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        if found.is_none() && is(attr.key.local_name().into_inner(), wanted) {
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?;
            let value = value.trim();
            found = Some((!value.is_empty()).then(|| value.to_string()));
        }
    }
    Ok(found.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The PUBLISH body of PcapPlusPlus' `sip_not_sdp.pcap` (a Zoiper client).
    const ZOIPER_PUBLISH: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          entity="sip:telephone1@172.16.98.101;transport=UDP">
  <tuple id="telephone1" >
     <status><basic>open</basic></status>
     <note>Online</note>
  </tuple>
</presence>"#;

    /// The initial PUBLISH of the shared `local/publish.pcap` (SIPp).
    const SIPP_PUBLISH_OPEN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@sipp.test">
<tuple id="alice-1">
<status><basic>open</basic></status>
<contact>sip:alice@127.0.0.1:5060</contact>
<note>Online</note>
</tuple>
</presence>"#;

    /// The modifying PUBLISH of `local/publish.pcap`.
    const SIPP_PUBLISH_CLOSED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@sipp.test">
<tuple id="alice-1">
<status><basic>closed</basic></status>
<note>In a meeting</note>
</tuple>
</presence>"#;

    /// The first NOTIFY of `local/presence-subscribe.pcap`.
    const SIPP_NOTIFY_OPEN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@sipp.test">
<tuple id="bob-sipp-1">
<status><basic>open</basic></status>
<contact priority="0.8">sip:bob@127.0.0.1:5070</contact>
<note xml:lang="en">Available</note>
</tuple>
</presence>"#;

    /// The final NOTIFY of `local/presence-subscribe.pcap`.
    const SIPP_NOTIFY_CLOSED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@sipp.test">
<tuple id="bob-sipp-1">
<status><basic>closed</basic></status>
</tuple>
</presence>"#;

    /// RFC 4480 section 3 example: data model with RPID person elements.
    const RFC4480_EXAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
     xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
     xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
     xmlns:c="urn:ietf:params:xml:ns:pidf:cipid"
     entity="pres:someone@example.com">
  <tuple id="bs35r9">
    <status>
      <basic>open</basic>
    </status>
    <dm:deviceID>urn:device:0003ba4811e3</dm:deviceID>
    <rpid:relationship><rpid:self/></rpid:relationship>
    <rpid:service-class><rpid:electronic/></rpid:service-class>
    <contact priority="0.8">im:someone@mobilecarrier.net</contact>
    <note xml:lang="en">Don't Disturb Please!</note>
    <note xml:lang="fr">Ne derangez pas, s'il vous plait</note>
    <timestamp>2005-10-27T16:49:29Z</timestamp>
  </tuple>
  <tuple id="ty4658">
    <status>
      <basic>open</basic>
    </status>
    <rpid:relationship><rpid:assistant/></rpid:relationship>
    <contact priority="1.0">mailto:secretary@example.com</contact>
  </tuple>
  <tuple id="eg92n8">
    <status>
      <basic>open</basic>
    </status>
    <dm:deviceID>urn:x-mac:0003ba4811e3</dm:deviceID>
    <rpid:class>email</rpid:class>
    <rpid:service-class><rpid:electronic/></rpid:service-class>
    <rpid:status-icon>http://example.com/mail.png</rpid:status-icon>
    <contact>mailto:someone@example.com</contact>
  </tuple>
  <note>I'll be in Tokyo next week</note>
  <dm:device id="pc147">
    <rpid:user-input idle-threshold="600"
      last-input="2004-10-21T13:20:00.000-05:00">idle</rpid:user-input>
    <dm:deviceID>urn:device:0003ba4811e3</dm:deviceID>
    <dm:note>PC</dm:note>
  </dm:device>
  <dm:person id="p1">
    <rpid:activities from="2005-05-30T12:00:00+05:00"
      until="2005-05-30T17:00:00+05:00">
      <rpid:note>Far away</rpid:note>
      <rpid:away/>
    </rpid:activities>
    <rpid:class>calendar</rpid:class>
    <rpid:mood>
      <rpid:angry/>
      <rpid:other>brooding</rpid:other>
    </rpid:mood>
    <rpid:place-is>
      <rpid:audio>
        <rpid:noisy/>
      </rpid:audio>
    </rpid:place-is>
    <rpid:privacy><rpid:unknown/></rpid:privacy>
    <rpid:sphere>bowling league</rpid:sphere>
    <dm:timestamp>2005-05-30T16:09:44+05:00</dm:timestamp>
  </dm:person>
</presence>"#;

    /// Pre-RFC RPID as Windows Messenger / OCS send it: activities as text
    /// of `<ep:activity>` inside the tuple's status.
    const MICROSOFT_RPID_DRAFT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
 xmlns:ep="urn:ietf:params:xml:ns:pidf:status:rpid-status"
 xmlns:ci="urn:ietf:params:xml:ns:pidf:cipid"
 entity="sip:bob@contoso.com">
<tuple id="0">
<status><basic>open</basic><ep:activities><ep:activity>on-the-phone</ep:activity></ep:activities></status>
<contact priority="1.000">sip:bob@10.0.0.5:5060;transport=tcp</contact>
</tuple>
<ci:display-name>Bob Smith</ci:display-name>
</presence>"#;

    /// eyeBeam / X-Lite style: a `pp:person` whose `<status>` wraps the
    /// activities, the note at presence level.
    const EYEBEAM_STYLE: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<presence xmlns='urn:ietf:params:xml:ns:pidf'
 xmlns:pp='urn:ietf:params:xml:ns:pidf:person'
 xmlns:es='urn:ietf:params:xml:ns:pidf:rpid:status:rpid-status'
 xmlns:ep='urn:ietf:params:xml:ns:pidf:rpid:rpid-person'
 entity='sip:carol@example.org'>
<pp:person><status><ep:activities><ep:away/></ep:activities></status></pp:person>
<note>Away</note>
<tuple id='t8d4d5e5c'><status><basic>open</basic></status></tuple>
</presence>"#;

    fn doc(body: &str) -> PresenceDocument {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    #[test]
    fn captured_publish_bodies() {
        let d = doc(ZOIPER_PUBLISH);
        assert_eq!(
            d.entity.as_deref(),
            Some("sip:telephone1@172.16.98.101;transport=UDP")
        );
        assert_eq!(d.tuples.len(), 1);
        assert_eq!(d.tuples[0].id.as_deref(), Some("telephone1"));
        assert_eq!(d.basic(), Some("open"));
        assert_eq!(d.note(), Some("Online"));
        assert!(d.activities().is_empty());

        let d = doc(SIPP_PUBLISH_OPEN);
        assert_eq!(d.entity.as_deref(), Some("sip:alice@sipp.test"));
        assert_eq!(
            d.tuples[0].contact.as_deref(),
            Some("sip:alice@127.0.0.1:5060")
        );
        assert_eq!((d.basic(), d.note()), (Some("open"), Some("Online")));

        let d = doc(SIPP_PUBLISH_CLOSED);
        assert_eq!(
            (d.basic(), d.note()),
            (Some("closed"), Some("In a meeting"))
        );
        assert_eq!(d.tuples[0].contact, None);
    }

    #[test]
    fn captured_notify_bodies() {
        let d = doc(SIPP_NOTIFY_OPEN);
        assert_eq!(d.entity.as_deref(), Some("sip:bob@sipp.test"));
        assert_eq!(
            d.tuples[0].contact.as_deref(),
            Some("sip:bob@127.0.0.1:5070"),
            "attributes of <contact> are not part of its value"
        );
        assert_eq!((d.basic(), d.note()), (Some("open"), Some("Available")));

        let d = doc(SIPP_NOTIFY_CLOSED);
        assert_eq!((d.basic(), d.note()), (Some("closed"), None));
    }

    #[test]
    fn rfc4480_data_model_with_rpid() {
        let d = doc(RFC4480_EXAMPLE);
        assert_eq!(d.entity.as_deref(), Some("pres:someone@example.com"));
        let ids: Vec<_> = d.tuples.iter().map(|t| t.id.as_deref()).collect();
        assert_eq!(ids, [Some("bs35r9"), Some("ty4658"), Some("eg92n8")]);
        assert_eq!(d.basic(), Some("open"));
        assert_eq!(
            d.tuples[0].notes,
            ["Don't Disturb Please!", "Ne derangez pas, s'il vous plait"]
        );
        assert_eq!(d.notes, ["I'll be in Tokyo next week"]);
        assert_eq!(d.persons.len(), 1);
        assert_eq!(d.persons[0].id.as_deref(), Some("p1"));
        // Mood's <other> and privacy's <unknown> are not activities; the
        // note inside <activities> is a note, not an activity.
        assert_eq!(d.activities(), ["away"]);
        assert_eq!(d.persons[0].notes, ["Far away"]);
        assert_eq!(d.note(), Some("Far away"), "the person's note comes first");
        assert_eq!(
            d.tuples[0].contact.as_deref(),
            Some("im:someone@mobilecarrier.net")
        );
    }

    #[test]
    fn microsoft_and_eyebeam_variants() {
        let d = doc(MICROSOFT_RPID_DRAFT);
        assert_eq!(d.entity.as_deref(), Some("sip:bob@contoso.com"));
        assert_eq!(d.basic(), Some("open"));
        assert_eq!(d.activities(), ["on-the-phone"]);
        assert_eq!(d.tuples[0].activities, ["on-the-phone"]);
        assert_eq!(d.note(), None);

        let d = doc(EYEBEAM_STYLE);
        assert_eq!(d.entity.as_deref(), Some("sip:carol@example.org"));
        assert_eq!(d.basic(), Some("open"));
        assert_eq!(d.activities(), ["away"]);
        assert_eq!(d.note(), Some("Away"));
    }

    #[test]
    fn prefixes_do_not_matter() {
        for (person, activities) in [
            ("dm:person", "rpid:activities"),
            ("dm:person", "rp:activities"),
            ("person", "activities"),
            ("x:person", "y:activities"),
        ] {
            let body = format!(
                r#"<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" entity="sip:a@b">
<p:tuple id="t"><p:status><p:basic>closed</p:basic></p:status></p:tuple>
<{person} id="p"><{activities}><busy/><meeting/></{activities}><note>Q3 review</note></{person}>
</p:presence>"#
            );
            let d = doc(&body);
            assert_eq!(d.basic(), Some("closed"), "{body}");
            assert_eq!(d.activities(), ["busy", "meeting"], "{body}");
            assert_eq!(d.note(), Some("Q3 review"), "{body}");
        }
    }

    #[test]
    fn activities_from_every_person_and_tuple_once_each() {
        let d = doc(r#"<presence entity="sip:a@b">
<tuple id="1"><status><basic>Open</basic><activities><activity>busy</activity></activities></status></tuple>
<person id="p1"><activities><on-the-phone/><busy/></activities></person>
<person id="p2"><activities><other>Lunch</other><other/></activities></person>
</presence>"#);
        assert_eq!(d.basic(), Some("open"), "basic is lower-cased");
        assert_eq!(d.activities(), ["on-the-phone", "busy", "Lunch", "other"]);
    }

    #[test]
    fn text_unescaping_and_tolerated_sloppiness() {
        let d = doc(
            "\u{feff}<presence entity=\"sip:a&amp;b@example.com\"><note>Tom &amp; Jerry &#x263A; \
             &#65;<![CDATA[ <x> ]]>&nbsp;</note></presence>",
        );
        assert_eq!(d.entity.as_deref(), Some("sip:a&b@example.com"));
        assert_eq!(d.note(), Some("Tom & Jerry \u{263a} A <x> &nbsp;"));

        let d = doc("<presence><note>Fish & Chips</note></presence>trailing junk <x>");
        assert_eq!(d.note(), Some("Fish & Chips"));
        assert_eq!(d.entity, None);

        let d = doc("<presence><note>in <b>bold</b> text</note></presence>");
        assert_eq!(d.note(), Some("in bold text"));

        let latin1 = b"<presence><note>M\xfcnchen</note></presence>";
        assert_eq!(
            parse(latin1).map(|d| d.notes),
            Ok(vec!["M\u{fffd}nchen".into()])
        );

        let d = doc("<presence/>");
        assert_eq!(d, PresenceDocument::default());
    }

    #[test]
    fn structure_names_elsewhere_are_ignored() {
        let d = doc(r#"<presence entity="sip:a@b">
<tuple id="1"><basic>open</basic><status><x><basic>open</basic></x></status></tuple>
<ext><note>not a presence note</note><activities><away/></activities></ext>
<device id="d"><note>PC</note></device>
</presence>"#);
        assert_eq!(d.basic(), None);
        assert_eq!(d.note(), None);
        assert!(d.activities().is_empty());
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b""), Err(PidfError::Empty));
        assert_eq!(parse(b" \r\n"), Err(PidfError::Empty));
        assert_eq!(parse(b"Online"), Err(PidfError::NoRootElement));
        assert_eq!(
            parse(b"<?xml version=\"1.0\"?><pidf-full/>"),
            Err(PidfError::NotPresence("pidf-full".into()))
        );
        assert_eq!(
            parse(b"<presence><tuple id=\"t\"><status>"),
            Err(PidfError::Unterminated("status".into()))
        );
        for malformed in [
            &b"<presence><tuple></presence>"[..],
            b"<presence></tuple>",
            b"<presence entity=\"a\" entity=\"b\"/>",
            b"<presence entity='x></presence>",
            b"<presence><tuple id=\"&bogus;\"/></presence>",
            b"<presence><!-- unterminated",
            b"<presence><",
        ] {
            assert!(
                matches!(parse(malformed), Err(PidfError::Malformed { .. })),
                "{}: {:?}",
                String::from_utf8_lossy(malformed),
                parse(malformed)
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mangled_documents_never_panic(
            cut in 0usize..2000,
            at in 0usize..2000,
            insert in "[<>/&;:=\"' a-z#x0-9!\\[\\]-]{0,8}",
        ) {
            let mut body = RFC4480_EXAMPLE.as_bytes().to_vec();
            let cut = cut.min(body.len());
            body.truncate(body.len() - cut / 2);
            let at = at.min(body.len());
            body.splice(at..at, insert.bytes());
            let _ = parse(&body);
        }
    }
}
