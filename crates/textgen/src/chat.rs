//! Chat templates: the model's own Jinja template, rendered with minijinja configured as
//! transformers configures Jinja (trim/lstrip blocks, Python string methods,
//! `raise_exception`, `strftime_now`).

use plugin_api::text::ChatMessage;
use std::borrow::Cow;

/// A chat message for template rendering.
#[derive(serde::Serialize)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: Content<'a>,
}

/// A message's content as templates read it: a string, or (multimodal templates) a list
/// of typed parts, `{"type": "text", "text": ...}` and `{"type": "image"}`.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

impl<'a> From<&'a str> for Content<'a> {
    fn from(s: &'a str) -> Self {
        Self::Text(Cow::Borrowed(s))
    }
}

/// One part of a [`Content::Parts`] list.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part<'a> {
    Text { text: &'a str },
    Image,
}

/// What a multimodal model's chat template sees: every message as a list of typed
/// parts in the user's order (an image part where each image was), after the model's
/// default `system_prompt` unless the messages have a system message.
pub fn media_messages<'a>(
    messages: &'a [ChatMessage],
    system_prompt: Option<&'a str>,
) -> Vec<Message<'a>> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(sys) =
        system_prompt.filter(|_| !messages.iter().any(|m| m.role.as_str() == "system"))
    {
        out.push(Message {
            role: "system",
            content: Content::Parts(vec![Part::Text { text: sys }]),
        });
    }
    out.extend(messages.iter().map(|m| {
        Message {
            role: m.role.as_str(),
            content: Content::Parts(
                m.parts
                    .iter()
                    .map(|p| {
                        if p.kind == plugin_api::text::PartKind::TEXT {
                            Part::Text {
                                text: p.text.as_str(),
                            }
                        } else {
                            Part::Image
                        }
                    })
                    .collect(),
            ),
        }
    }));
    out
}

/// What a text-only template sees of a multimodal prompt for a runtime that places the
/// media itself (llama.cpp's `mtmd`): each message's text with `marker` where each
/// media part was, after the model's default `system_prompt` unless the messages have
/// a system message.
pub fn marked_messages<'a>(
    messages: &'a [ChatMessage],
    system_prompt: Option<&'a str>,
    marker: &str,
) -> Vec<Message<'a>> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(sys) =
        system_prompt.filter(|_| !messages.iter().any(|m| m.role.as_str() == "system"))
    {
        out.push(Message {
            role: "system",
            content: Content::Text(Cow::Borrowed(sys)),
        });
    }
    out.extend(messages.iter().map(|m| {
        Message {
            role: m.role.as_str(),
            content: Content::Text(Cow::Owned(
                m.parts
                    .iter()
                    .map(|p| {
                        if p.kind == plugin_api::text::PartKind::TEXT {
                            p.text.as_str()
                        } else {
                            marker
                        }
                    })
                    .collect(),
            )),
        }
    }));
    out
}

/// What a text-only model's chat template sees for input `index`: its messages' text,
/// after the model's default `system_prompt` unless the input has a system message.
/// A message with an image (or any other media part) is refused.
pub fn text_messages<'a>(
    messages: &'a [ChatMessage],
    system_prompt: Option<&'a str>,
    index: usize,
) -> Result<Vec<Message<'a>>, String> {
    if messages.iter().any(ChatMessage::has_media) {
        return Err(format!(
            "input #{index}: image inputs need a vision-language (vlm) model"
        ));
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(sys) =
        system_prompt.filter(|_| !messages.iter().any(|m| m.role.as_str() == "system"))
    {
        out.push(Message {
            role: "system",
            content: Content::Text(Cow::Borrowed(sys)),
        });
    }
    out.extend(messages.iter().map(|m| Message {
        role: m.role.as_str(),
        content: Content::Text(match m.parts.as_slice() {
            [one] => Cow::Borrowed(one.text.as_str()),
            _ => Cow::Owned(m.joined_text()),
        }),
    }));
    Ok(out)
}

/// The message of a `CONTEXT_LENGTH` error for the first prompt (of `prompt_lens`, in
/// input order) that leaves no room to generate in a context of `ctx` tokens.
pub fn context_overflow(
    prompt_lens: impl IntoIterator<Item = usize>,
    ctx: usize,
) -> Option<String> {
    prompt_lens
        .into_iter()
        .enumerate()
        .find(|(_, n)| *n >= ctx)
        .map(|(i, n)| {
            format!("input #{i}: the prompt has {n} tokens, the model's context is {ctx}")
        })
}

/// Render `messages` with the model's Jinja chat template (minijinja with Python-style
/// methods, `raise_exception`, `strftime_now`), ending with the generation prompt.
/// `bos_token` / `eos_token` are the texts the template may print.
pub fn render_chat(
    template: &str,
    messages: &[Message<'_>],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| {
        // Date only matters to templates that print "today"; use UTC without a tz crate.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let (y, m, d) = civil_from_days(days);
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        fmt.replace("%Y", &y.to_string())
            .replace("%m", &format!("{m:02}"))
            .replace("%d", &format!("{d:02}"))
            .replace("%B", MONTHS[(m - 1) as usize])
            .replace("%b", &MONTHS[(m - 1) as usize][..3])
    });
    // The template is the model's, not ours: bound what it may run and print.
    env.set_fuel(Some(TEMPLATE_FUEL));
    let template = without_generation_tags(template);
    let tmpl = env
        .template_from_str(&template)
        .map_err(|e| format!("chat template does not parse: {e}"))?;
    let mut out = Capped::default();
    tmpl.render_captured_to(
        minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos_token,
            eos_token => eos_token,
        },
        &mut out,
    )
    .map_err(|e| {
        if out.full {
            format!(
                "chat template: the rendered prompt would pass {} MB",
                MAX_RENDERED_BYTES >> 20
            )
        } else {
            format!("chat template: {e}")
        }
    })?;
    String::from_utf8(out.bytes).map_err(|_| "chat template: the output is not UTF-8".into())
}

/// `template` without transformers' `{% generation %}` / `{% endgeneration %}` tags
/// (they mark the assistant's text for training masks and render as nothing; LLaVA's
/// processors ship them).
fn without_generation_tags(template: &str) -> Cow<'_, str> {
    if !template.contains("generation") {
        return Cow::Borrowed(template);
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start + 2..start + len];
        let name = tag.trim_matches(|c: char| c == '-' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if name != "generation" && name != "endgeneration" {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Instructions one rendering of a chat template may run: real templates use a few
/// thousand for a long conversation; a runaway loop stops within milliseconds.
pub const TEMPLATE_FUEL: u64 = 5_000_000;
/// Longest rendered prompt, in bytes (far past any model's context).
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// A writer that refuses to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    /// Set when a write was refused.
    full: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.full = true;
            return Err(std::io::Error::other("rendered prompt too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_render_as_nothing() {
        // LLaVA's processor template (llava-hf), assistant text inside the tags.
        let t = "{% for m in messages %}{{ m.role.upper() + ': ' }}{% if m.role == 'assistant' %}{% generation %}{{ m.content + ' ' }}{% endgeneration %}{% else %}{{ m.content + ' ' }}{%- endif %}{% endfor %}{%- generation -%}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";
        let msgs = [
            Message {
                role: "user",
                content: "Hi".into(),
            },
            Message {
                role: "assistant",
                content: "Hello".into(),
            },
        ];
        assert_eq!(
            render_chat(t, &msgs, "", "").unwrap(),
            "USER: Hi ASSISTANT: Hello ASSISTANT:"
        );
        assert_eq!(without_generation_tags("{{ x }}"), "{{ x }}");
        assert_eq!(without_generation_tags("a{% generation"), "a{% generation");
    }

    #[test]
    fn renders_a_chatml_template_with_python_methods() {
        let t = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render_chat(
            t,
            &[Message {
                role: "user",
                content: " Hi ".into(),
            }],
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let py = "{{ messages[0].content.strip().upper() }}";
        assert_eq!(
            render_chat(
                py,
                &[Message {
                    role: "user",
                    content: " a ".into()
                }],
                "",
                ""
            )
            .unwrap(),
            "A"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = "{{ raise_exception('roles must alternate') }}";
        let e = render_chat(t, &[], "", "").unwrap_err();
        assert!(e.contains("roles must alternate"), "{e}");
    }

    #[test]
    fn a_runaway_template_is_stopped_by_its_fuel_and_output_caps() {
        let hi = [Message {
            role: "user",
            content: "hi".into(),
        }];
        // 10^10 iterations: this wedged the model's worker at 100% CPU.
        let spin =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render_chat(spin, &hi, "", "").unwrap_err();
        assert!(e.contains("fuel"), "{e}");
        // 100 MB of output from little work: refused at the output cap.
        let flood = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
        let e = render_chat(flood, &hi, "", "").unwrap_err();
        assert!(e.contains("would pass 16 MB"), "{e}");
    }
}
