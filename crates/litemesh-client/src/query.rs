//! Queries: options, and their answers as streams of events and of rows.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::types::{QueryEvent, Token};
use crate::value::Value;

/// How a query is run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryOptions {
    /// Read-your-writes: the node waits until it has applied everything this
    /// token names before it runs the query (`min_token`).
    pub min_token: Option<Token>,
    /// How long the node waits for `min_token` (or `max_lag`) before it
    /// answers 503 (`wait_ms`; the agent's default is 5 s, its maximum 60 s).
    pub wait: Option<Duration>,
    /// Bounded staleness (`max_lag_ms`): the node serves only if its copy
    /// of every writer was known complete at most this long ago.
    pub max_lag: Option<Duration>,
    /// `fallback=nearest`: when the node cannot satisfy the level in time,
    /// it runs the query on its nearest peer that can
    /// ([`crate::EndOfQuery::served_by`] names it).
    pub fallback_nearest: bool,
}

impl QueryOptions {
    /// Reads no older than `token`.
    pub fn after(token: impl Into<Token>) -> QueryOptions {
        QueryOptions {
            min_token: Some(token.into()),
            ..QueryOptions::default()
        }
    }

    /// Reads from a copy at most `max_lag` stale.
    pub fn max_lag(mut self, max_lag: Duration) -> QueryOptions {
        self.max_lag = Some(max_lag);
        self
    }

    /// Lets the agent run the query on its nearest peer when it cannot
    /// satisfy the level itself.
    pub fn fallback_nearest(mut self) -> QueryOptions {
        self.fallback_nearest = true;
        self
    }

    /// Waits up to `wait` for the token.
    pub fn wait(mut self, wait: Duration) -> QueryOptions {
        self.wait = Some(wait);
        self
    }
}

/// A query's answer, one event per line, as the agent sends them.
///
/// Ends after the last line; a line that cannot be read or decoded is an
/// error, and the last item.
pub struct Events {
    url: String,
    reader: BufReader<Box<dyn Read + Send>>,
    line: String,
    finished: bool,
}

impl Events {
    pub(crate) fn new(url: String, reader: impl Read + Send + 'static) -> Events {
        Events {
            url,
            reader: BufReader::with_capacity(64 * 1024, Box::new(reader)),
            line: String::new(),
            finished: false,
        }
    }

    /// Reads what is left of the answer, so that its connection can serve
    /// the next request.
    fn drain(&mut self) {
        self.finished = true;
        let _ = std::io::copy(&mut self.reader, &mut std::io::sink());
    }
}

impl Iterator for Events {
    type Item = Result<QueryEvent>;

    fn next(&mut self) -> Option<Result<QueryEvent>> {
        while !self.finished {
            self.line.clear();
            match self.reader.read_line(&mut self.line) {
                Ok(0) => self.finished = true,
                Ok(_) => {
                    let line = self.line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    return Some(serde_json::from_str(line).map_err(|source| {
                        self.finished = true;
                        Error::Decode {
                            url: self.url.clone(),
                            source,
                            body: line.to_string(),
                        }
                    }));
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(Error::Read {
                        url: self.url.clone(),
                        source: e.into(),
                    }));
                }
            }
        }
        None
    }
}

/// A query's rows as they arrive: each item is one row's values, in column
/// order.
///
/// The iterator ends after the agent's end-of-query event; it yields one
/// last `Err` and ends if the agent ends the stream with an error
/// ([`Error::Query`]), if the stream stops without its end marker
/// ([`Error::Truncated`]), or if it cannot be read or decoded. So a complete
/// answer is exactly an iteration without `Err`:
///
/// ```no_run
/// # fn run(rows: litemesh_client::Rows) -> Result<(), litemesh_client::Error> {
/// let all: Vec<Vec<litemesh_client::Value>> = rows.collect::<Result<_, _>>()?;
/// # Ok(()) }
/// ```
pub struct Rows {
    events: Events,
    columns: Vec<String>,
    /// A row that came before any `columns` event.
    pending: Option<Vec<Value>>,
    rows: u64,
    time: Option<f64>,
    served_by: Option<String>,
    done: bool,
}

impl Rows {
    /// Reads the answer up to its `columns` event.
    pub(crate) fn start(events: Events) -> Result<Rows> {
        let mut rows = Rows {
            events,
            columns: Vec::new(),
            pending: None,
            rows: 0,
            time: None,
            served_by: None,
            done: false,
        };
        loop {
            match rows.events.next() {
                Some(Ok(QueryEvent::Columns(c))) => {
                    rows.columns = c;
                    return Ok(rows);
                }
                Some(Ok(QueryEvent::Row(_, values))) => {
                    rows.pending = Some(values);
                    return Ok(rows);
                }
                Some(Ok(QueryEvent::Unknown)) => {}
                Some(Ok(QueryEvent::Eoq(e))) => {
                    rows.finish(e);
                    return Ok(rows);
                }
                Some(Ok(QueryEvent::Error(message))) => {
                    return Err(Error::Query { rows: 0, message });
                }
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Truncated { rows: 0 }),
            }
        }
    }

    /// The columns' names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Rows received so far.
    pub fn rows_read(&self) -> u64 {
        self.rows
    }

    /// Seconds the query took on the agent, once every row was received.
    pub fn time(&self) -> Option<f64> {
        self.time
    }

    /// The peer that ran the query when the agent forwarded it
    /// (`fallback=nearest`), once every row was received; `None` when the
    /// agent ran it itself.
    pub fn served_by(&self) -> Option<&str> {
        self.served_by.as_deref()
    }

    /// The URL of the query at the agent that answered (with several agents,
    /// the one the client fell back on).
    pub fn url(&self) -> &str {
        &self.events.url
    }

    fn finish(&mut self, end: crate::types::EndOfQuery) {
        self.time = Some(end.time);
        self.served_by = end.served_by;
        self.done = true;
        self.events.drain();
    }
}

impl Iterator for Rows {
    type Item = Result<Vec<Value>>;

    fn next(&mut self) -> Option<Result<Vec<Value>>> {
        if let Some(row) = self.pending.take() {
            self.rows += 1;
            return Some(Ok(row));
        }
        while !self.done {
            let failed = |rows: &mut Rows, e: Error| {
                rows.done = true;
                Some(Err(e))
            };
            match self.events.next() {
                Some(Ok(QueryEvent::Row(_, values))) => {
                    self.rows += 1;
                    return Some(Ok(values));
                }
                Some(Ok(QueryEvent::Columns(c))) => self.columns = c,
                Some(Ok(QueryEvent::Unknown)) => {}
                Some(Ok(QueryEvent::Eoq(e))) => self.finish(e),
                Some(Ok(QueryEvent::Error(message))) => {
                    let rows = self.rows;
                    return failed(self, Error::Query { rows, message });
                }
                Some(Err(e)) => return failed(self, e),
                None => {
                    let rows = self.rows;
                    return failed(self, Error::Truncated { rows });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &str) -> Events {
        Events::new(
            "http://a/v1/queries".into(),
            std::io::Cursor::new(body.to_string()),
        )
    }

    /// Columns, rows and time of a whole answer.
    type Answer = (Vec<String>, Vec<Vec<Value>>, Option<f64>);

    fn rows(body: &str) -> Result<Answer> {
        let mut r = Rows::start(events(body))?;
        let all = r.by_ref().collect::<Result<Vec<_>>>()?;
        Ok((r.columns().to_vec(), all, r.time()))
    }

    #[test]
    fn rows_stream_until_the_end_of_query() {
        let body = "{\"columns\":[\"a\",\"b\"]}\n\
                    {\"row\":[1,[5,\"x\"]]}\n\
                    \n\
                    {\"row\":[2,[null,{\"blob\":\"AAH/\"}]]}\n\
                    {\"eoq\":{\"time\":0.25}}\n";
        let (cols, all, time) = rows(body).unwrap();
        assert_eq!(cols, ["a", "b"]);
        assert_eq!(
            all,
            vec![
                vec![Value::Integer(5), Value::Text("x".into())],
                vec![Value::Null, Value::Blob(vec![0, 1, 255])],
            ]
        );
        assert_eq!(time, Some(0.25));
        // No rows.
        let (cols, all, _) = rows("{\"columns\":[\"n\"]}\n{\"eoq\":{\"time\":0}}\n").unwrap();
        assert_eq!((cols.len(), all.len()), (1, 0));
    }

    #[test]
    fn an_error_event_ends_the_rows_with_an_error() {
        let body = "{\"columns\":[\"a\"]}\n{\"row\":[1,[1]]}\n{\"row\":[2,[2]]}\n\
                    {\"error\":\"more than 2 rows\"}\n";
        let mut r = Rows::start(events(body)).unwrap();
        assert_eq!(r.next().unwrap().unwrap(), vec![Value::Integer(1)]);
        assert_eq!(r.next().unwrap().unwrap(), vec![Value::Integer(2)]);
        let e = r.next().unwrap().unwrap_err();
        assert!(
            matches!(&e, Error::Query { rows: 2, message } if message == "more than 2 rows"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "after 2 row(s): more than 2 rows");
        assert!(r.next().is_none(), "an error is the last item");
        // An error before any row: the query fails at once.
        let e = Rows::start(events("{\"error\":\"boom\"}\n")).err().unwrap();
        assert!(matches!(e, Error::Query { rows: 0, .. }), "{e:?}");
    }

    #[test]
    fn a_cut_stream_is_an_error() {
        let e = rows("{\"columns\":[\"a\"]}\n{\"row\":[1,[5]]}\n").unwrap_err();
        assert!(matches!(e, Error::Truncated { rows: 1 }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the answer ended after 1 row(s) without its end marker (connection cut)"
        );
        assert!(matches!(rows(""), Err(Error::Truncated { rows: 0 })));
        // A line cut in the middle.
        let e = rows("{\"columns\":[\"a\"]}\n{\"row\":[1,[5").unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    }

    #[test]
    fn unknown_events_and_fields_are_skipped() {
        let body = "{\"columns\":[\"a\"],\"types\":[\"INTEGER\"]}\n\
                    {\"progress\":{\"rows\":1}}\n\
                    {\"row\":[1,[7]],\"node\":\"n2\"}\n\
                    {\"eoq\":{\"time\":1.5,\"node\":\"n2\"}}\n";
        let (cols, all, time) = rows(body).unwrap();
        assert_eq!(cols, ["a"]);
        assert_eq!(all, vec![vec![Value::Integer(7)]]);
        assert_eq!(time, Some(1.5));
    }

    #[test]
    fn events_are_exposed_as_they_come() {
        let body = "{\"columns\":[\"a\"]}\n{\"row\":[1,[1.5]]}\n{\"eoq\":{\"time\":0.5}}\n";
        let all: Vec<QueryEvent> = events(body).collect::<Result<_>>().unwrap();
        assert_eq!(
            all,
            vec![
                QueryEvent::Columns(vec!["a".into()]),
                QueryEvent::Row(1, vec![Value::Real(1.5)]),
                QueryEvent::Eoq(crate::types::EndOfQuery {
                    time: 0.5,
                    served_by: None
                }),
            ]
        );
    }
}
