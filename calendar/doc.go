// Package calendar reads people's calendars (iCalendar feeds over HTTP,
// CalDAV collections) and sets what they say as each person's state:
// a meeting as activity meeting with its end ("In a meeting until
// 13:00"), an out-of-office event as vacation, changed at each event's
// start and end. Expand turns iCalendar data into the events of a
// window (recurrences, overrides, time zones); StatusAt and NextChange
// say what the events mean at a moment; a Keeper reads every person's
// calendar on an interval and sets the state through the bridge under
// bridge.OriginCalendar, the weakest origin. README.md has the
// configuration and what is read how.
package calendar
